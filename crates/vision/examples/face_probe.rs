//! Learnability probe for the synthetic faces: a linear softmax classifier on standardized
//! pixels (a floor for what a CNN gets) and nearest class mean (a "triviality" check).
//! `cargo run --release -p pipeline-vision --example face_probe -- [train_per_class] [test_per_class]`
use pipeline_vision::render_face;

fn features(c: usize, seed: u64) -> Vec<f32> {
    let img = render_face(c, seed, 48);
    let v: Vec<f32> = img.pixels().map(|p| p.0[0] as f32).collect();
    let m = v.iter().sum::<f32>() / v.len() as f32;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt().max(1.0);
    v.iter().map(|x| (x - m) / sd).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let (ntr, nte) = (args.first().copied().unwrap_or(600), args.get(1).copied().unwrap_or(200));
    let d = 48 * 48;
    let mk = |n: usize, off: u64| {
        let mut xs = Vec::new();
        for i in 0..n {
            for c in 0..7 {
                xs.push((features(c, off + (i * 7 + c) as u64), c));
            }
        }
        xs
    };
    let train = mk(ntr, 0);
    let test = mk(nte, 10_000_000);
    // Nearest class mean.
    let mut means = vec![vec![0f32; d]; 7];
    for (x, c) in &train {
        for k in 0..d {
            means[*c][k] += x[k] / ntr as f32;
        }
    }
    let ncm = test
        .iter()
        .filter(|(x, c)| {
            let best = (0..7)
                .min_by(|&a, &b| {
                    let da: f32 = x.iter().zip(&means[a]).map(|(p, q)| (p - q).powi(2)).sum();
                    let db: f32 = x.iter().zip(&means[b]).map(|(p, q)| (p - q).powi(2)).sum();
                    da.partial_cmp(&db).unwrap()
                })
                .unwrap();
            best == *c
        })
        .count() as f32
        / test.len() as f32;
    // Softmax regression, plain SGD.
    let mut w = vec![vec![0f32; d + 1]; 7];
    let lr = 0.002f32;
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 0..30 {
        // Deterministic shuffle.
        for i in (1..order.len()).rev() {
            let j = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(epoch) >> 17) as usize % (i + 1);
            order.swap(i, j);
        }
        for &i in &order {
            let (x, c) = &train[i];
            let mut z: Vec<f32> = w.iter().map(|wc| wc[d] + wc[..d].iter().zip(x).map(|(a, b)| a * b).sum::<f32>()).collect();
            let m = z.iter().cloned().fold(f32::MIN, f32::max);
            let s: f32 = z.iter_mut().map(|v| { *v = (*v - m).exp(); *v }).sum();
            for k in 0..7 {
                let g = z[k] / s - if k == *c { 1.0 } else { 0.0 };
                for j in 0..d {
                    w[k][j] -= lr * (g * x[j] + 1e-4 * w[k][j]);
                }
                w[k][d] -= lr * g;
            }
        }
    }
    let mut conf = [[0usize; 7]; 7];
    for (x, c) in &test {
        let z: Vec<f32> = w.iter().map(|wc| wc[d] + wc[..d].iter().zip(x).map(|(a, b)| a * b).sum::<f32>()).collect();
        let p = (0..7).max_by(|&a, &b| z[a].partial_cmp(&z[b]).unwrap()).unwrap();
        conf[*c][p] += 1;
    }
    let acc = (0..7).map(|k| conf[k][k]).sum::<usize>() as f32 / test.len() as f32;
    println!("nearest-class-mean test accuracy {:.3}", ncm);
    println!("linear softmax test accuracy {:.3} (rows = true, cols = predicted)", acc);
    for (k, row) in conf.iter().enumerate() {
        println!("{:>9} {:?}", pipeline_vision::CLASSES[k], row);
    }
}
