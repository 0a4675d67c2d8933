"""PyTorch side of bench/train-cpu and bench/train-gpu: the same nets, loss and loop shape
as crates/model (cnn: 3x3 conv -> 2x2 max-pool -> ReLU blocks, Dense, Dropout, Dense;
vgg16: 13 convs + Dense 256 -> ReLU -> Dropout 0.5 -> Dense 7), Adam, soft cross-entropy,
data preloaded on the device and batched by indexing. Prints `pytorch <images/s>` (mean
over epochs after the first)."""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="cnn")
p.add_argument("--channels", default="32,64,128")
p.add_argument("--dense", type=int, default=128)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--epochs", type=int, default=4)
p.add_argument("--n", type=int, default=700)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev = torch.device(a.device)


class Cnn(nn.Module):
    def __init__(self, chans, dense, k=7, dropout=0.3):
        super().__init__()
        convs, cin, side = [], 1, 48
        for c in chans:
            convs.append(nn.Conv2d(cin, c, 3, padding=1))
            cin, side = c, side // 2
        self.convs = nn.ModuleList(convs)
        self.fc1 = nn.Linear(cin * side * side, dense)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dense, k)

    def forward(self, x):
        for c in self.convs:
            x = F.relu(F.max_pool2d(c(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.drop(x))


class Vgg16(nn.Module):
    CFG = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]

    def __init__(self, k=7):
        super().__init__()
        layers, cin = [], 1
        for c in self.CFG:
            if c == 0:
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, k))

    def forward(self, x):
        return self.head(self.features(x))


net = (Vgg16() if a.model == "vgg16" else Cnn([int(c) for c in a.channels.split(",")], a.dense)).to(dev)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x_all = torch.randn(a.n, 1, 48, 48, device=dev)
y_all = F.one_hot(torch.arange(a.n, device=dev) % 7, 7).float()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


rates = []
for epoch in range(a.epochs):
    sync()
    t = time.perf_counter()
    perm = torch.randperm(a.n, device=dev)
    for i in range(0, a.n, a.batch):
        idx = perm[i:i + a.batch]
        x, q = x_all[idx], y_all[idx]
        loss = -(q * F.log_softmax(net(x), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    dt = time.perf_counter() - t
    rates.append(a.n / dt)
    print(f"pytorch epoch {epoch + 1}: {a.n / dt:.1f} images/s", flush=True)
rest = rates[1:] or rates
print(f"pytorch {sum(rest) / len(rest):.1f}")
