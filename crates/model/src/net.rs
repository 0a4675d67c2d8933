//! The two models and the config that rebuilds them.

use burn::module::{Module, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};

use crate::conv::{conv3x3_forward, ModelBackend};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::IMAGE_SIZE;
use crate::error::{ModelError, Result};

// burn's CPU RNG (init, dropout) is process-global: one training at a time per process
// keeps `seed` reproducible (training saturates the cores anyway). Building a net to load a
// record draws from it too, so loading takes the lock as well: a model loaded while another
// trains in the same process (an `evaluate` beside a `train` in one run) changed that
// training's draws, and its bytes. Here, below both `train` and `artifact`, which take it
// (in `train` it made an import cycle: artifact -> train -> artifact).
pub(crate) static TRAIN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Small 3-block CNN: the default, trains in about a minute on 2 CPU cores.
    #[default]
    Cnn,
    /// VGG16's 13 conv layers + Flatten -> Dense 256 -> ReLU -> Dropout 0.5 -> Dense K.
    Vgg16,
    /// Small residual net with batch norm for 48x48 (see [`ResNet`]); widths from `cnn_channels`.
    Resnet,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::Vgg16 => "vgg16",
            ModelKind::Resnet => "resnet",
        }
    }
}

/// Everything needed to rebuild the network; saved as `config.json` next to the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Output classes, in logit order.
    pub classes: Vec<String>,
    /// `cnn`: output channels of its 3x3 conv blocks (each followed by ReLU and 2x2 max-pool).
    /// `resnet`: the stem's and the residual blocks' widths (non-decreasing).
    pub cnn_channels: Vec<usize>,
    /// `cnn`: width of the hidden dense layer (`resnet` has none: global average pooling).
    pub cnn_dense: usize,
    /// `cnn`: dropout before the last layer (`vgg16` uses the study's 0.5).
    pub cnn_dropout: f64,
    /// `vgg16`: divide every conv width by this (1 = real VGG16; tests use 16 for speed).
    pub vgg_width_divisor: usize,
    /// `vgg16`: the conv base was frozen during training (provenance of the record).
    pub freeze: bool,
    /// Standardise every image to zero mean and unit variance before the net sees it
    /// ([`crate::data::standardize_image`]), in training and prediction alike. Left out of
    /// `config.json` when off, so models saved before it existed keep their bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standardize: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Cnn,
            classes: crate::default_classes(),
            cnn_channels: vec![32, 64, 128],
            cnn_dense: 128,
            cnn_dropout: 0.3,
            vgg_width_divisor: 1,
            freeze: false,
            standardize: false,
        }
    }
}

/// VGG16's conv widths; `0` marks a 2x2 max-pool.
pub const VGG16_CFG: [usize; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
/// Index of each conv inside torchvision's `vgg16().features` (ReLUs and pools take the rest).
pub const VGG16_TORCH_INDEX: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
/// The study's head.
pub const VGG16_DENSE: usize = 256;
pub const VGG16_DROPOUT: f64 = 0.5;

impl ModelConfig {
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    pub fn validate(&self) -> Result<()> {
        if self.classes.len() < 2 || self.classes.len() > 100_000 {
            return Err(ModelError::config("classes", "2 to 100,000 classes"));
        }
        if self.kind == ModelKind::Resnet && self.cnn_channels.windows(2).any(|w| w[1] < w[0]) {
            return Err(ModelError::config("cnn_channels", "resnet widths must not decrease (shortcuts pad channels with zeros)"));
        }
        if self.kind != ModelKind::Vgg16 {
            // upper bounds found by a hostile pass: a config.json asking for 4e9 units aborted
            // `predict` allocating 36 TB instead of failing on the file
            if self.cnn_channels.is_empty() || self.cnn_channels.len() > 5 || self.cnn_channels.iter().any(|&c| c == 0 || c > 4096) {
                return Err(ModelError::config("cnn_channels", "1 to 5 widths of 1..=4096 (48 px halves per block)"));
            }
            if self.cnn_dense == 0 || self.cnn_dense > 65_536 {
                return Err(ModelError::config("cnn_dense", "1..=65536 units"));
            }
        }
        if !(0.0..1.0).contains(&self.cnn_dropout) {
            return Err(ModelError::config("cnn_dropout", "must be in [0, 1)"));
        }
        if self.vgg_width_divisor == 0 || 64 % self.vgg_width_divisor != 0 {
            return Err(ModelError::config("vgg_width_divisor", "must divide 64"));
        }
        Ok(())
    }

    /// VGG16 conv widths after the divisor (13 entries).
    pub fn vgg_widths(&self) -> Vec<usize> {
        VGG16_CFG.iter().filter(|&&c| c != 0).map(|c| c / self.vgg_width_divisor).collect()
    }

    pub fn init<B: ModelBackend>(&self, device: &B::Device) -> Net<B> {
        match self.kind {
            ModelKind::Cnn => Net::Cnn(Cnn::new(self, device)),
            ModelKind::Vgg16 => Net::Vgg16(Vgg16::new(self, device)),
            ModelKind::Resnet => Net::Resnet(ResNet::new(self, device)),
        }
    }
}

fn conv3x3<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

fn pool2() -> MaxPool2d {
    MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()
}

#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    pub convs: Vec<Conv2d<B>>,
    pub pool: MaxPool2d,
    pub fc1: Linear<B>,
    pub dropout: Dropout,
    pub fc2: Linear<B>,
}

impl<B: ModelBackend> Cnn<B> {
    fn new(cfg: &ModelConfig, device: &B::Device) -> Self {
        let mut cin = 1;
        let mut side = IMAGE_SIZE;
        let mut convs = Vec::new();
        for &c in &cfg.cnn_channels {
            convs.push(conv3x3(cin, c, device));
            cin = c;
            side /= 2;
        }
        Cnn {
            convs,
            pool: pool2(),
            fc1: LinearConfig::new(cin * side * side, cfg.cnn_dense).init(device),
            dropout: DropoutConfig::new(cfg.cnn_dropout).init(),
            fc2: LinearConfig::new(cfg.cnn_dense, cfg.num_classes()).init(device),
        }
    }

    fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 2> {
        for conv in &self.convs {
            // Pool before ReLU: same result (both monotone), a quarter of the ReLU work.
            x = relu(self.pool.forward(conv3x3_forward(conv, x)));
        }
        let x: Tensor<B, 2> = x.flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        self.fc2.forward(self.dropout.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct Vgg16<B: Backend> {
    /// The 13 convolutions, in order (`features.{VGG16_TORCH_INDEX[i]}` in torchvision).
    pub features: Vec<Conv2d<B>>,
    pub pool: MaxPool2d,
    pub fc1: Linear<B>,
    pub dropout: Dropout,
    pub fc2: Linear<B>,
}

impl<B: ModelBackend> Vgg16<B> {
    fn new(cfg: &ModelConfig, device: &B::Device) -> Self {
        let mut cin = 1;
        let mut side = IMAGE_SIZE;
        let mut features = Vec::new();
        for &c in VGG16_CFG.iter() {
            if c == 0 {
                side /= 2;
            } else {
                let c = c / cfg.vgg_width_divisor;
                features.push(conv3x3(cin, c, device));
                cin = c;
            }
        }
        Vgg16 {
            features,
            pool: pool2(),
            // 48 -> 24 -> 12 -> 6 -> 3 -> 1: Flatten of 1x1x512, as Keras' VGG16 on 48x48.
            fc1: LinearConfig::new(cin * side * side, VGG16_DENSE).init(device),
            dropout: DropoutConfig::new(VGG16_DROPOUT).init(),
            fc2: LinearConfig::new(VGG16_DENSE, cfg.num_classes()).init(device),
        }
    }

    fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut i = 0;
        for &c in VGG16_CFG.iter() {
            if c == 0 {
                x = self.pool.forward(x);
            } else {
                x = relu(conv3x3_forward(&self.features[i], x));
                i += 1;
            }
        }
        let x: Tensor<B, 2> = x.flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        self.fc2.forward(self.dropout.forward(x))
    }

    /// Stop gradients into the conv base (the study's frozen ImageNet features).
    pub fn freeze_features(mut self) -> Self {
        self.features = self.features.into_iter().map(|c| c.no_grad()).collect();
        self
    }
}

/// Batch norm over `[batch, channels, h, w]`. burn's `BatchNorm` holds the parameters and
/// running statistics; the forward pass is ours because burn's training path swaps batch and
/// channels first, a scalar strided copy on `flex` (the same cost `conv.rs` avoids).
fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let (mean, var) = if B::ad_enabled(&x.device()) {
        // means over h*w first (contiguous), then over the batch: flex reduces a strided
        // axis element by element
        let per_channel = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).mean_dim(2).mean_dim(0).reshape([1, c, 1, 1]);
        let mean = per_channel(x.clone());
        let var = per_channel((x.clone() - mean.clone()).square());
        let m = bn.momentum;
        let rm = bn.running_mean.value_sync() * (1.0 - m) + mean.clone().detach().reshape([c]) * m;
        let rv = bn.running_var.value_sync() * (1.0 - m) + var.clone().detach().reshape([c]) * m;
        bn.running_mean.update(rm.detach());
        bn.running_var.update(rv.detach());
        (mean, var)
    } else {
        (bn.running_mean.value().reshape([1, c, 1, 1]), bn.running_var.value().reshape([1, c, 1, 1]))
    };
    let scale = bn.gamma.val().reshape([1, c, 1, 1]) / (var + bn.epsilon).sqrt();
    (x - mean) * scale + bn.beta.val().reshape([1, c, 1, 1])
}

/// A basic residual block (He et al. 2016): conv-BN-ReLU-conv-BN, plus the input, then ReLU.
/// A wider block's shortcut pads the input with zero channels (their option A: no
/// parameters, and no 1x1 convolution, whose burn backward is slow on `flex`).
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
}

impl<B: ModelBackend> ResBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        ResBlock {
            conv1: conv3x3(cin, cout, device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv3x3(cout, cout, device),
            bn2: BatchNormConfig::new(cout).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = relu(batch_norm(&self.bn1, conv3x3_forward(&self.conv1, x.clone())));
        let y = batch_norm(&self.bn2, conv3x3_forward(&self.conv2, y));
        let [b, cin, h, w] = x.dims();
        let cout = y.dims()[1];
        let shortcut =
            if cout == cin { x } else { Tensor::cat(vec![x.clone(), Tensor::zeros([b, cout - cin, h, w], &x.device())], 1) };
        relu(y + shortcut)
    }
}

/// Small residual net for 48x48: a 3x3 stem (`cnn_channels[0]`, BN, ReLU) and a 2x2 max-pool
/// to 24x24, then one residual block per width with a max-pool between blocks (24 -> 12 ->
/// 6 for three), global average pooling, dropout and one linear layer. With `16, 32, 64` it
/// does about the multiply-adds of the 3-block `cnn` (7M per image), but trains ~5x slower
/// on the CPU: batch norm's broadcasts run as strided loops on `flex`.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub stem: Conv2d<B>,
    pub stem_bn: BatchNorm<B>,
    pub blocks: Vec<ResBlock<B>>,
    pub pool: MaxPool2d,
    pub dropout: Dropout,
    pub fc: Linear<B>,
}

impl<B: ModelBackend> ResNet<B> {
    fn new(cfg: &ModelConfig, device: &B::Device) -> Self {
        let w0 = cfg.cnn_channels[0];
        let mut cin = w0;
        let mut blocks = Vec::new();
        for &c in &cfg.cnn_channels {
            blocks.push(ResBlock::new(cin, c, device));
            cin = c;
        }
        ResNet {
            stem: conv3x3(1, w0, device),
            stem_bn: BatchNormConfig::new(w0).init(device),
            blocks,
            pool: pool2(),
            dropout: DropoutConfig::new(cfg.cnn_dropout).init(),
            fc: LinearConfig::new(cin, cfg.num_classes()).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.pool.forward(relu(batch_norm(&self.stem_bn, conv3x3_forward(&self.stem, x))));
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                x = self.pool.forward(x);
            }
            x = block.forward(x);
        }
        let [b, c, h, w] = x.dims();
        let x: Tensor<B, 2> = x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        self.fc.forward(self.dropout.forward(x))
    }
}

/// A batch norm whose running statistics carry the ids `next + 1`, `next + 2`.
fn renumbered<B: Backend>(bn: BatchNorm<B>, next: &mut u64) -> BatchNorm<B> {
    let mut id = || {
        *next += 1;
        ParamId::from(*next)
    };
    let (mean, var) = (bn.running_mean.value_sync(), bn.running_var.value_sync());
    BatchNorm { running_mean: RunningState::with_id(id(), mean), running_var: RunningState::with_id(id(), var), ..bn }
}

#[derive(Module, Debug)]
pub enum Net<B: Backend> {
    Cnn(Cnn<B>),
    Vgg16(Vgg16<B>),
    Resnet(ResNet<B>),
}

impl<B: Backend> Net<B> {
    /// Give batch norms' running statistics ids from `next` on. The record stores every id,
    /// and a running state's is random (`ParamId::new`); burn's `ModuleMapper` renumbers
    /// parameters but cannot set a running state's id (its `map` keeps its own), so without
    /// this one key would save different bytes each time.
    pub fn renumber_running_states(self, mut next: u64) -> Self {
        match self {
            Net::Resnet(mut r) => {
                r.stem_bn = renumbered(r.stem_bn, &mut next);
                r.blocks = r
                    .blocks
                    .into_iter()
                    .map(|b| ResBlock { bn1: renumbered(b.bn1, &mut next), bn2: renumbered(b.bn2, &mut next), ..b })
                    .collect();
                Net::Resnet(r)
            }
            other => other,
        }
    }
}

impl<B: ModelBackend> Net<B> {
    /// `[batch, 1, 48, 48]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Net::Cnn(m) => m.forward(x),
            Net::Vgg16(m) => m.forward(x),
            Net::Resnet(m) => m.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn shapes_of_both_models() {
        let _serial = crate::tests::serial();
        let device = Default::default();
        let x = Tensor::<Flex, 4>::zeros([2, 1, 48, 48], &device);
        let cnn = ModelConfig::default().init::<Flex>(&device);
        assert_eq!(cnn.forward(x.clone()).dims(), [2, 7]);
        let cfg = ModelConfig { kind: ModelKind::Vgg16, vgg_width_divisor: 16, ..Default::default() };
        let vgg = cfg.init::<Flex>(&device);
        let Net::Vgg16(v) = &vgg else { panic!("not vgg") };
        assert_eq!(v.features.len(), 13);
        assert_eq!(vgg.forward(x.clone()).dims(), [2, 7]);
        let cfg = ModelConfig { kind: ModelKind::Resnet, cnn_channels: vec![4, 8, 8], ..Default::default() };
        assert_eq!(cfg.init::<Flex>(&device).forward(x).dims(), [2, 7]);
    }

    /// Our batch norm against burn's, in training (batch statistics, running statistics
    /// updated) and inference (running statistics).
    #[test]
    fn batch_norm_matches_burns() {
        use burn::backend::Autodiff;
        use burn::module::AutodiffModule;
        use burn::tensor::Distribution;
        type A = Autodiff<Flex>;
        let _serial = crate::tests::serial();
        let device = Default::default();
        let x = Tensor::<A, 4>::random([3, 5, 4, 6], Distribution::Normal(1.5, 2.0), &device);
        let ours = BatchNormConfig::new(5).init::<A>(&device);
        let theirs = BatchNormConfig::new(5).init::<A>(&device);
        let close = |a: Tensor<A, 4>, b: Tensor<A, 4>| {
            let d: f32 = (a - b).abs().max().into_scalar();
            assert!(d < 1e-4, "differs by {d}");
        };
        close(batch_norm(&ours, x.clone()), theirs.forward(x.clone()));
        let rm = |bn: &BatchNorm<A>| bn.running_var.value().into_data().to_vec::<f32>().unwrap();
        let (a, b) = (rm(&ours), rm(&theirs));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4), "{a:?} {b:?}");
        let xi = x.inner();
        let (ours, theirs) = (ours.valid(), theirs.valid());
        let d: f32 = (batch_norm(&ours, xi.clone()) - theirs.forward(xi)).abs().max().into_scalar();
        assert!(d < 1e-4, "inference differs by {d}");
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = ModelConfig { cnn_channels: vec![], ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("cnn_channels"));
        let bad = ModelConfig { vgg_width_divisor: 3, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("vgg_width_divisor"));
        assert!(ModelConfig::default().validate().is_ok());
    }
}
