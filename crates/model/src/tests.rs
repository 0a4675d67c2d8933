//! End-to-end tests on tiny nets and synthetic images (fast in release).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};

use crate::data::{load_image_folder, Dataset};
use crate::net::{ModelConfig, ModelKind, Net};
use crate::train::{soft_cross_entropy, train_to_dir, NoObserver, TrainConfig, TrainRequest};
use crate::BackendChoice;

/// burn's CPU RNG is process-global: tests that create nets (or train) take this so a
/// concurrent test cannot draw from the RNG between `seed` and initialisation.
pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seven visually distinct synthetic classes: class c is a bright band at rows 6c..6c+6.
fn write_class_image(path: &Path, class: usize, variant: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::GrayImage::from_fn(48, 48, |x, y| {
        let band = (y as usize / 6) == class;
        let noise = ((x * 7 + y * 13 + variant as u32 * 31) % 17) as u8;
        image::Luma([if band { 220 + noise } else { 20 + noise }])
    });
    img.save(path).unwrap();
}

fn image_folder(root: &Path, per_class: u8) {
    for (c, name) in crate::CLASSES.iter().enumerate() {
        for v in 0..per_class {
            write_class_image(&root.join(name).join(format!("{name}_{v:02}.png")), c, v);
        }
    }
}

/// `<dir>/train` (3 images a class) and `<dir>/valid` (1 a class), written and loaded.
fn banded_sets(dir: &Path) -> (Dataset, Dataset) {
    let classes = crate::default_classes();
    image_folder(&dir.join("train"), 3);
    image_folder(&dir.join("valid"), 1);
    let load = |sub: &str| load_image_folder(&dir.join(sub), &classes).unwrap();
    (load("train"), load("valid"))
}

fn tiny_model() -> ModelConfig {
    ModelConfig { cnn_channels: vec![4, 8], cnn_dense: 16, cnn_dropout: 0.0, ..Default::default() }
}

fn tiny_train() -> TrainConfig {
    TrainConfig { lr: 0.01, batch_size: 7, epochs: 12, patience: 0, ..Default::default() }
}

fn train(dir: &Path, train: &Dataset, valid: &Dataset, model: ModelConfig, tc: TrainConfig, weights: Option<PathBuf>) -> crate::TrainSummary {
    let req = TrainRequest { model, train: tc, train_set: train, valid_set: Some(valid), weights, init: None, backend: BackendChoice::Cpu };
    train_to_dir(&req, dir, &mut NoObserver).unwrap()
}

#[test]
fn soft_cross_entropy_matches_hand_computation() {
    let device = Default::default();
    let logits = Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5, 0.0], [2, 2]), &device);
    let q = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.25f32, 0.75, 1.0, 0.0], [2, 2]), &device);
    let got = soft_cross_entropy(logits, q).into_data().to_vec::<f32>().unwrap()[0] as f64;
    let lse1 = (1f64.exp() + 2f64.exp()).ln();
    let lse2 = (0.5f64.exp() + 1.0).ln();
    let want = (-(0.25 * (1.0 - lse1) + 0.75 * (2.0 - lse1)) - (0.5 - lse2)) / 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn trains_saves_reloads_predicts_and_evaluates() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (tr, va) = banded_sets(d.path());
    let out = d.path().join("model");
    let s = train(&out, &tr, &va, tiny_model(), tiny_train(), None);
    assert_eq!(s.history.len(), 12);
    // The bands are trivially separable: a working loop learns them.
    let last = s.history.last().unwrap();
    assert!(last.train_loss < s.history[0].train_loss, "{:?}", s.history);
    assert!(s.val_accuracy.unwrap() >= 6.0 / 7.0, "{:?}", s.history);
    for f in ["model.mpk", "config.json", "classes.txt", "metrics.csv", "curves.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("epoch,train_loss,train_accuracy,val_loss,val_accuracy\n"));

    // The same request trains to the same bytes (a cache key must determine its output).
    let again = d.path().join("again");
    train(&again, &tr, &va, tiny_model(), tiny_train(), None);
    for f in ["model.mpk", "config.json", "classes.txt", "metrics.csv", "curves.png"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(), "{f} differs between two trainings of one request");
    }

    // Reload and predict; any size / channel count decodes.
    let rgb = d.path().join("big.png");
    image::RgbImage::from_fn(96, 96, |_, y| if y / 12 == 3 { image::Rgb([230, 230, 230]) } else { image::Rgb([20, 20, 20]) })
        .save(&rgb)
        .unwrap();
    let imgs = vec![d.path().join("valid/happy/happy_00.png"), rgb];
    let preds = crate::predict(&out, &imgs, 3).unwrap();
    assert_eq!(preds.len(), 2);
    assert_eq!(preds[0].top.len(), 3);
    assert_eq!(preds[0].top[0].0, "happy");
    assert!(preds[0].top.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(preds[0].file == "happy_00.png");

    // Evaluate + report. The files depend on the evaluation only; the change since an
    // earlier report is computed apart (the stage prints it in its summary).
    let ev = crate::evaluate_dir(&out, &d.path().join("valid"), 2, BackendChoice::Cpu).unwrap();
    assert_eq!(ev.images, 7);
    assert_eq!(ev.confusion.iter().flatten().sum::<u64>(), 7);
    assert!((ev.accuracy - s.val_accuracy.unwrap()).abs() < 1e-9);
    let r1 = d.path().join("r1");
    crate::write_report(&r1, &ev, "cnn", None).unwrap();
    let mut worse = ev.clone();
    worse.accuracy = 0.33;
    let r2 = d.path().join("r2");
    crate::write_report(&r2, &worse, "cnn", None).unwrap();
    let changes = crate::report::changes_since(&r2.join("report.json"), &ev);
    assert!(changes[0].starts_with("accuracy 0.33 -> "), "{changes:?}");
    let r3 = d.path().join("r3");
    crate::write_report(&r3, &ev, "cnn", None).unwrap();
    for f in ["report.md", "report.json", "confusion.png", "top2.csv"] {
        assert_eq!(std::fs::read(r1.join(f)).unwrap(), std::fs::read(r3.join(f)).unwrap(), "{f} differs between two writes");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(r1.join("report.json")).unwrap()).unwrap();
    assert!(json["accuracy_ci95"]["low"].as_f64().unwrap() <= ev.accuracy);
    assert!(json.get("leakage").is_none());
    for f in ["report.md", "report.json", "confusion.png", "top2.csv"] {
        assert!(r1.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(r1.join("report.md")).unwrap();
    assert!(md.contains("Rows = **predicted** class, columns = **true** class"));
    let top2 = std::fs::read_to_string(r1.join("top2.csv")).unwrap();
    assert!(top2.lines().nth(1).unwrap().starts_with("angry_00.png,angry,"), "{top2}");
}

#[test]
fn same_seed_same_result_and_hard_targets_differ() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let classes = crate::default_classes();
    image_folder(&d.path().join("train"), 2);
    let mut tr = load_image_folder(&d.path().join("train"), &classes).unwrap();
    // Soft targets: half the mass on the next class.
    let k = 7;
    for i in 0..tr.len() {
        let l = tr.labels[i];
        tr.targets[i * k..(i + 1) * k].fill(0.0);
        tr.targets[i * k + l] = 0.5;
        tr.targets[i * k + (l + 1) % k] = 0.5;
    }
    let tc = TrainConfig { epochs: 3, ..tiny_train() };
    let a = train(&d.path().join("a"), &tr, &tr, tiny_model(), tc.clone(), None);
    let b = train(&d.path().join("b"), &tr, &tr, tiny_model(), tc.clone(), None);
    assert_eq!(a.history.iter().map(|m| m.train_loss).collect::<Vec<_>>(), b.history.iter().map(|m| m.train_loss).collect::<Vec<_>>());
    let hard = TrainConfig { targets: crate::TargetKind::Hard, ..tc.clone() };
    let h = train(&d.path().join("h"), &tr, &tr, tiny_model(), hard, None);
    assert_ne!(a.history[0].train_loss, h.history[0].train_loss);
    // With q = (0.5, 0.5) the loss cannot go below ln 2.
    assert!(a.history.iter().all(|m| m.train_loss > 2f64.ln() - 1e-4));
    let sgd = TrainConfig { optimizer: crate::OptimizerKind::Sgd, weight_decay: 1e-4, ..tc };
    let s = train(&d.path().join("s"), &tr, &tr, tiny_model(), sgd, None);
    assert!(s.history.iter().all(|m| m.train_loss.is_finite()));
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let classes = crate::default_classes();
    image_folder(&d.path().join("train"), 2);
    let tr = load_image_folder(&d.path().join("train"), &classes).unwrap();
    // A validation set whose labels are shifted by one: learning the train set makes its
    // loss rise, so training stops early and keeps an early epoch.
    let mut va = tr.clone();
    va.labels = va.labels.iter().map(|l| (l + 1) % 7).collect();
    va.to_hard_targets();
    let tc = TrainConfig { epochs: 30, patience: 2, ..tiny_train() };
    let s = train(&d.path().join("m"), &tr, &va, tiny_model(), tc, None);
    assert!(s.stopped_early, "{:?}", s.history);
    assert!(s.history.len() < 30);
    assert_eq!(s.history.len(), s.best_epoch + 2);
    let best = s.history.iter().map(|m| m.val_loss.unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(s.val_loss.unwrap(), best);
    // The saved record is the best epoch's: its validation loss is reproduced on reload.
    let art = crate::load_artifact(&d.path().join("m")).unwrap();
    let net = art.load_net::<Flex>(&Default::default()).unwrap();
    let (l, _) = crate::train::evaluate_loss(&net, &va, &Default::default());
    assert!((l - best).abs() < 1e-4, "{l} vs {best}");
}

/// torchvision-named VGG16 conv weights (3 input channels) for widths / `div`.
fn write_vgg_safetensors(path: &Path, div: usize, wrong_shape_at: Option<usize>) -> Vec<f32> {
    use safetensors::tensor::{Dtype, TensorView};
    let cfg = ModelConfig { kind: ModelKind::Vgg16, vgg_width_divisor: div, ..Default::default() };
    let mut cin = 3;
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut first = Vec::new();
    for (i, &cout) in cfg.vgg_widths().iter().enumerate() {
        let idx = crate::net::VGG16_TORCH_INDEX[i];
        let kin = if wrong_shape_at == Some(i) { cin + 1 } else { cin };
        let n = cout * kin * 9;
        let w: Vec<f32> = (0..n).map(|j| ((j * 7 + i) % 11) as f32 / 100.0 - 0.05).collect();
        if i == 0 {
            first = w.clone();
        }
        let b: Vec<f32> = (0..cout).map(|j| j as f32 / 1000.0).collect();
        bufs.push((format!("features.{idx}.weight"), vec![cout, kin, 3, 3], bytemuck_f32(&w)));
        bufs.push((format!("features.{idx}.bias"), vec![cout], bytemuck_f32(&b)));
        cin = cout;
    }
    let views: Vec<(String, TensorView)> =
        bufs.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
    first
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn vgg16_loads_torchvision_safetensors_and_freezes_the_base() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let wpath = d.path().join("vgg16.safetensors");
    let first = write_vgg_safetensors(&wpath, 16, None);
    let device = Default::default();
    let cfg = ModelConfig { kind: ModelKind::Vgg16, vgg_width_divisor: 16, freeze: true, ..Default::default() };
    let net = crate::weights::apply_pretrained(cfg.init::<Flex>(&device), Some(&wpath), false, &device).unwrap();
    let Net::Vgg16(v) = &net else { panic!() };
    let w0 = v.features[0].weight.val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(v.features[0].weight.dims(), [4, 1, 3, 3]);
    // RGB summed to gray: out 0, tap 0 = w[0,0,0] + w[0,1,0] + w[0,2,0].
    assert!((w0[0] - (first[0] + first[9] + first[18])).abs() < 1e-6);
    let b12 = v.features[12].bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
    assert!((b12[3] - 0.003).abs() < 1e-7);

    // Train with the base frozen: conv weights stay, the head moves.
    let classes = crate::default_classes();
    image_folder(&d.path().join("train"), 1);
    let tr = load_image_folder(&d.path().join("train"), &classes).unwrap();
    let tc = TrainConfig { epochs: 1, batch_size: 7, ..Default::default() };
    train(&d.path().join("m"), &tr, &tr, cfg.clone(), tc, Some(wpath.clone()));
    let art = crate::load_artifact(&d.path().join("m")).unwrap();
    assert_eq!(art.config.model.kind, ModelKind::Vgg16);
    let Net::Vgg16(t) = art.load_net::<Flex>(&device).unwrap() else { panic!() };
    let t0 = t.features[0].weight.val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(t0, w0, "frozen conv weights changed");
    let fc_before = v.fc2.weight.val().into_data().to_vec::<f32>().unwrap();
    let fc_after = t.fc2.weight.val().into_data().to_vec::<f32>().unwrap();
    assert_ne!(fc_before, fc_after);

    // Without freeze the base trains too.
    let unfrozen = ModelConfig { freeze: false, ..cfg.clone() };
    let tc = TrainConfig { epochs: 1, batch_size: 7, ..Default::default() };
    train(&d.path().join("u"), &tr, &tr, unfrozen, tc, Some(wpath.clone()));
    let Net::Vgg16(u) = crate::load_artifact(&d.path().join("u")).unwrap().load_net::<Flex>(&device).unwrap() else {
        panic!()
    };
    assert_ne!(u.features[0].weight.val().into_data().to_vec::<f32>().unwrap(), w0);

    // A shape mismatch names the tensor and both shapes.
    let bad = d.path().join("bad.safetensors");
    write_vgg_safetensors(&bad, 16, Some(2));
    let err = crate::weights::apply_pretrained(cfg.init::<Flex>(&device), Some(&bad), false, &device).unwrap_err().to_string();
    assert!(err.contains("features.5.weight") && err.contains("bad.safetensors"), "{err}");
    // Weights on the cnn are refused.
    let err = crate::weights::apply_pretrained(tiny_model().init::<Flex>(&device), Some(&wpath), false, &device).unwrap_err();
    assert!(err.to_string().contains("vgg16"));
}

/// Write `tensors` as `torch.save(state_dict)` does (zip archive, pickle protocol 2, one
/// little-endian float32 storage per tensor), so the .pth path is tested without PyTorch.
fn write_torch_pth(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    use std::io::Write;
    fn global(p: &mut Vec<u8>, module: &str, name: &str) {
        p.push(b'c');
        p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn int_tuple(p: &mut Vec<u8>, vs: &[usize]) {
        p.push(b'(');
        vs.iter().for_each(|&v| int(p, v));
        p.push(b't');
    }
    fn ordered_dict(p: &mut Vec<u8>) {
        global(p, "collections", "OrderedDict");
        p.extend_from_slice(b")R");
    }
    let mut pkl = vec![0x80, 2];
    ordered_dict(&mut pkl);
    pkl.push(b'(');
    for (i, (name, shape, data)) in tensors.iter().enumerate() {
        unicode(&mut pkl, name);
        global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
        pkl.push(b'(');
        // persistent id: ('storage', torch.FloatStorage, key, location, numel)
        pkl.push(b'(');
        unicode(&mut pkl, "storage");
        global(&mut pkl, "torch", "FloatStorage");
        unicode(&mut pkl, &i.to_string());
        unicode(&mut pkl, "cpu");
        int(&mut pkl, data.len());
        pkl.extend_from_slice(b"tQ");
        int(&mut pkl, 0); // storage offset
        int_tuple(&mut pkl, shape);
        let strides: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
        int_tuple(&mut pkl, &strides);
        pkl.push(0x89); // requires_grad = False
        ordered_dict(&mut pkl); // backward hooks
        pkl.extend_from_slice(b"tR");
    }
    pkl.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    };
    put("data.pkl", &pkl);
    put("byteorder", b"little");
    for (i, (_, _, data)) in tensors.iter().enumerate() {
        put(&format!("data/{i}"), &bytemuck_f32(data));
    }
    put("version", b"3\n");
    zip.finish().unwrap();
}

#[test]
fn vgg16_loads_a_torchvision_pth_state_dict_like_the_safetensors_file() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let st = d.path().join("vgg16.safetensors");
    write_vgg_safetensors(&st, 16, None);
    // The same tensors as a .pth, laid out as torch.save writes it (checked once against
    // PyTorch 2.15 both ways: torch.load reads this file, and a torch.save of it loads here).
    let cfg = ModelConfig { kind: ModelKind::Vgg16, vgg_width_divisor: 16, ..Default::default() };
    let mut tensors = Vec::new();
    let bytes = std::fs::read(&st).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in parsed.tensors() {
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.push((name.to_string(), view.shape().to_vec(), data));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let pth = d.path().join("vgg16.pth");
    write_torch_pth(&pth, &tensors);

    let device = Default::default();
    let conv_weights = |path: &Path| {
        let net = crate::weights::apply_pretrained(cfg.init::<Flex>(&device), Some(path), false, &device).unwrap();
        let Net::Vgg16(v) = net else { panic!() };
        v.features
            .iter()
            .map(|c| (c.weight.val().into_data().to_vec::<f32>().unwrap(), c.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap()))
            .collect::<Vec<_>>()
    };
    let from_st = conv_weights(&st);
    let from_pth = conv_weights(&pth);
    assert_eq!(from_st.len(), 13);
    assert_eq!(from_st, from_pth, ".pth and .safetensors with the same tensors must load the same weights");
    // and they are the file's values, not the initialisation: features.28.bias = j / 1000.
    assert!((from_pth[12].1[5] - 0.005).abs() < 1e-7);

    // A file that is not a state dict names itself.
    let junk = d.path().join("junk.pth");
    std::fs::write(&junk, b"not a zip").unwrap();
    let err = crate::weights::apply_pretrained(cfg.init::<Flex>(&device), Some(&junk), false, &device).unwrap_err().to_string();
    assert!(err.contains("junk.pth"), "{err}");
}

/// The residual net learns the bands; its batch norms' running statistics are trained, saved
/// with the record and used by prediction (evaluation after reloading gives the training's
/// validation accuracy).
#[test]
fn a_resnet_learns_and_its_batch_statistics_survive_the_record() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (tr, va) = banded_sets(d.path());
    let out = d.path().join("model");
    let cfg = ModelConfig { kind: crate::ModelKind::Resnet, cnn_channels: vec![4, 8], ..tiny_model() };
    let s = train(&out, &tr, &va, cfg.clone(), TrainConfig { epochs: 20, ..tiny_train() }, None);
    assert!(s.history.last().unwrap().train_loss < s.history[0].train_loss, "{:?}", s.history);
    // one request, one record: the running statistics' ids were random
    let again = d.path().join("again");
    train(&again, &tr, &va, cfg, TrainConfig { epochs: 20, ..tiny_train() }, None);
    assert!(std::fs::read(out.join("model.mpk")).unwrap() == std::fs::read(again.join("model.mpk")).unwrap(), "two trainings of one request differ");
    assert!(s.val_accuracy.unwrap() >= 5.0 / 7.0, "{:?}", s.history);
    let art = crate::load_artifact(&out).unwrap();
    let crate::net::Net::Resnet(r) = art.load_net::<Flex>(&Default::default()).unwrap() else { panic!("not a resnet") };
    let mean = r.stem_bn.running_mean.value().into_data().to_vec::<f32>().unwrap();
    assert!(mean.iter().any(|m| m.abs() > 1e-3), "running mean never updated: {mean:?}");
    let ev = crate::evaluate_dir(&out, &d.path().join("valid"), 2, BackendChoice::Cpu).unwrap();
    assert!((ev.accuracy - s.val_accuracy.unwrap()).abs() < 1e-9, "{} vs {:?}", ev.accuracy, s.val_accuracy);
}

#[test]
fn a_standardizing_model_learns_and_predicts_the_same_whatever_the_brightness_and_contrast() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (tr, va) = banded_sets(d.path());
    let out = d.path().join("model");
    let s = train(&out, &tr, &va, ModelConfig { standardize: true, ..tiny_model() }, tiny_train(), None);
    assert!(s.val_accuracy.unwrap() >= 6.0 / 7.0, "{:?}", s.history);
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(cfg.contains("\"standardize\": true"), "{cfg}");
    // The same images darker and with less contrast (no clipping): standardisation removes
    // an affine change of intensity, so the prediction path must give the same probabilities
    // (it would not if it skipped the step training took).
    let art = crate::load_artifact(&out).unwrap();
    let dim: Vec<f32> = va.pixels.iter().map(|v| v * 0.5 + 0.1).collect();
    let a = crate::predict::artifact_probabilities(&art, &va.pixels, BackendChoice::Cpu).unwrap();
    let b = crate::predict::artifact_probabilities(&art, &dim, BackendChoice::Cpu).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "{a:?} vs {b:?}");
    // A model without it is not invariant (the check above can fail).
    let plain = d.path().join("plain");
    train(&plain, &tr, &va, tiny_model(), tiny_train(), None);
    let art = crate::load_artifact(&plain).unwrap();
    assert!(!std::fs::read_to_string(plain.join("config.json")).unwrap().contains("standardize"));
    let a = crate::predict::artifact_probabilities(&art, &va.pixels, BackendChoice::Cpu).unwrap();
    let b = crate::predict::artifact_probabilities(&art, &dim, BackendChoice::Cpu).unwrap();
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
}

#[test]
fn standardize_image_gives_zero_mean_unit_variance_and_keeps_a_flat_image_finite() {
    let mut px: Vec<f32> = (0..crate::data::PIXELS).map(|i| (i % 48) as f32 / 47.0).collect();
    crate::data::standardize_image(&mut px);
    let n = px.len() as f64;
    let mean = px.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4, "{mean} {var}");
    let mut flat = vec![0.5f32; crate::data::PIXELS];
    crate::data::standardize_image(&mut flat);
    assert!(flat.iter().all(|v| *v == 0.0));
}

#[test]
fn training_from_init_starts_from_its_weights_and_refuses_another_network() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (tr, va) = banded_sets(d.path());
    let base = d.path().join("base");
    let s = train(&base, &tr, &va, tiny_model(), tiny_train(), None);
    assert!(s.val_accuracy.unwrap() >= 6.0 / 7.0, "{:?}", s.history);
    // One epoch at a learning rate too small to learn anything: only a net that starts
    // from the trained weights separates the bands.
    let still = TrainConfig { lr: 1e-7, epochs: 1, ..tiny_train() };
    let run = |dir: &str, model: ModelConfig, init: Option<PathBuf>| {
        let req = TrainRequest { model, train: still.clone(), train_set: &tr, valid_set: Some(&va), weights: None, init, backend: BackendChoice::Cpu };
        train_to_dir(&req, &d.path().join(dir), &mut NoObserver)
    };
    let tuned = run("tuned", tiny_model(), Some(base.clone())).unwrap();
    assert!(tuned.history[0].val_accuracy.unwrap() >= 6.0 / 7.0, "{:?}", tuned.history);
    let fresh = run("fresh", tiny_model(), None).unwrap();
    assert!(fresh.history[0].val_accuracy.unwrap() < 0.5, "{:?}", fresh.history);
    // Another network, other classes, or no model at all: an error naming what differs.
    let wider = ModelConfig { cnn_channels: vec![4, 16], ..tiny_model() };
    let err = run("wider", wider, Some(base.clone())).unwrap_err().to_string();
    assert!(err.contains("cnn_channels [4, 8] (this training: [4, 16])") && err.contains("config.json"), "{err}");
    let mut reversed = tiny_model();
    reversed.classes.reverse();
    let err = run("reversed", reversed, Some(base.clone())).unwrap_err().to_string();
    assert!(err.contains("classes"), "{err}");
    let standardized = ModelConfig { standardize: true, ..tiny_model() };
    let err = run("std", standardized, Some(base.clone())).unwrap_err().to_string();
    assert!(err.contains("standardize false (this training: true)"), "{err}");
    let err = run("none", tiny_model(), Some(d.path().join("valid"))).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    // Nothing was written for the refused ones.
    assert!(!d.path().join("wider").exists());

    // A config that matches over a record that does not (a wider net's weights): burn took
    // those silently and trained a wider net labelled as the narrow one; now refused, for
    // init and for loading alike, naming the record.
    let wide_dir = d.path().join("wide");
    train(&wide_dir, &tr, &va, ModelConfig { cnn_channels: vec![4, 16], ..tiny_model() }, TrainConfig { epochs: 1, ..tiny_train() }, None);
    let forged = d.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    std::fs::copy(base.join("config.json"), forged.join("config.json")).unwrap();
    std::fs::copy(wide_dir.join("model.mpk"), forged.join("model.mpk")).unwrap();
    let err = run("from-forged", tiny_model(), Some(forged.clone())).unwrap_err().to_string();
    assert!(err.contains("the model to start from (init)") && err.contains("does not match the network") && err.contains("model.mpk"), "{err}");
    let err = crate::load_artifact(&forged).unwrap().load_net::<Flex>(&Default::default()).unwrap_err().to_string();
    assert!(err.contains("does not match the network"), "{err}");

    // An ensemble whose member is its own directory: an error, not a stack overflow.
    let selfish = d.path().join("selfish");
    std::fs::create_dir_all(&selfish).unwrap();
    std::fs::copy(base.join("model.mpk"), selfish.join("model.mpk")).unwrap();
    let cfg = std::fs::read_to_string(base.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["format"] = "pipeline-model/ensemble-1".into();
    v["members"] = serde_json::json!(["model.mpk"]);
    std::fs::write(selfish.join("config.json"), v.to_string()).unwrap();
    let err = crate::load_artifact(&selfish).unwrap_err().to_string();
    assert!(err.contains("an ensemble member is itself an ensemble"), "{err}");

    // A record, or a member's directory, planted as a symbolic link (to a file elsewhere):
    // refused, naming the link; the same files copied load.
    let linked = d.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::copy(base.join("config.json"), linked.join("config.json")).unwrap();
    std::os::unix::fs::symlink(base.join("model.mpk"), linked.join("model.mpk")).unwrap();
    let err = crate::load_artifact(&linked).unwrap_err().to_string();
    assert!(err.contains("is a symbolic link") && err.contains("linked/model.mpk"), "{err}");
    let ens = d.path().join("ens");
    std::fs::create_dir_all(ens.join("members")).unwrap();
    std::os::unix::fs::symlink(&base, ens.join("members/0")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["format"] = "pipeline-model/ensemble-1".into();
    v["members"] = serde_json::json!(["members/0/model.mpk"]);
    std::fs::write(ens.join("config.json"), v.to_string()).unwrap();
    let err = crate::load_artifact(&ens).unwrap_err().to_string();
    assert!(err.contains("is a symbolic link") && err.contains("members/0"), "{err}");
    std::fs::remove_file(ens.join("members/0")).unwrap();
    std::fs::create_dir_all(ens.join("members/0")).unwrap();
    for f in ["config.json", "model.mpk"] {
        std::fs::copy(base.join(f), ens.join("members/0").join(f)).unwrap();
    }
    crate::load_artifact(&ens).unwrap();
    // one member listed twice: refused (it would weigh double in the average)
    v["members"] = serde_json::json!(["members/0/model.mpk", "members/0/./model.mpk"]);
    std::fs::write(ens.join("config.json"), v.to_string()).unwrap();
    let err = crate::load_artifact(&ens).unwrap_err().to_string();
    assert!(err.contains("\"members/0/./model.mpk\" is listed twice"), "{err}");
}

#[test]
fn mixup_blends_images_and_targets_with_one_weight_per_batch() {
    use rand::SeedableRng;
    let (b, k, px) = (4, 3, 5);
    let x0: Vec<f32> = (0..b * px).map(|i| (i / px) as f32).collect(); // image i is all i
    let y0: Vec<f32> = (0..b).flat_map(|i| (0..k).map(move |c| if c == i % k { 1.0 } else { 0.0 })).collect();
    let (mut x, mut y) = (x0.clone(), y0.clone());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    crate::train::mix_batch(&mut x, &mut y, b, k, 0.4, &mut rng);
    // every target still sums to 1; every image is constant (a blend of two constants)
    for i in 0..b {
        let s: f32 = y[i * k..(i + 1) * k].iter().sum();
        assert!((s - 1.0).abs() < 1e-6, "{y:?}");
        assert!(x[i * px..(i + 1) * px].iter().all(|&v| v == x[i * px]), "{x:?}");
        assert!((0.0..=3.0).contains(&x[i * px]));
    }
    // one weight for the batch: each image's value is l*i + (1-l)*p(i), and the same l gives
    // the target's weight on its own class
    assert_ne!(x, x0, "nothing was mixed");
    let mut again = (x0.clone(), y0.clone());
    crate::train::mix_batch(&mut again.0, &mut again.1, b, k, 0.4, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
    assert_eq!((again.0, again.1), (x, y), "seeded: the same blend");
    // found by a hostile pass: mixup 1e-300 passed the check and the sampler never returned
    for bad in [1e-300, 0.001, -0.1, 11.0, f64::NAN] {
        let e = crate::TrainConfig { mixup: bad, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("mixup"), "{bad}: {e}");
    }
    crate::train::mix_batch(&mut x0.clone(), &mut y0.clone(), b, k, 1e-300, &mut rng); // returns
    // a batch of one is left as it is
    let (mut x1, mut y1) = (vec![1.0f32; px], vec![1.0, 0.0, 0.0]);
    crate::train::mix_batch(&mut x1, &mut y1, 1, k, 0.4, &mut rng);
    assert_eq!((x1, y1), (vec![1.0f32; px], vec![1.0, 0.0, 0.0]));
}

/// Found by a hostile pass: a FIFO at `config.json` or `model.mpk` hung `predict`, and a
/// config asking for 4e9 dense units aborted it allocating 36 TB; each is now an error
/// naming the file.
#[test]
fn a_model_directory_with_special_files_or_huge_layers_is_refused_by_name() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let classes = crate::default_classes();
    image_folder(&d.path().join("train"), 1);
    let tr = load_image_folder(&d.path().join("train"), &classes).unwrap();
    let m = d.path().join("m");
    train(&m, &tr, &tr, tiny_model(), TrainConfig { epochs: 1, ..tiny_train() }, None);
    let fifo = |p: &Path| {
        std::fs::remove_file(p).unwrap();
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    let config = std::fs::read_to_string(m.join("config.json")).unwrap();
    let record = std::fs::read(m.join("model.mpk")).unwrap();
    fifo(&m.join("model.mpk"));
    let e = crate::load_artifact(&m).err().unwrap().to_string();
    assert!(e.contains("model.mpk") && e.contains("not a file"), "{e}");
    std::fs::remove_file(m.join("model.mpk")).unwrap();
    std::fs::write(m.join("model.mpk"), record).unwrap();
    let huge = config.replace("\"cnn_dense\": 16", "\"cnn_dense\": 4000000000");
    assert_ne!(huge, config, "{config}");
    std::fs::write(m.join("config.json"), huge).unwrap();
    let e = crate::load_artifact(&m).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("cnn_dense"), "{e}");
    fifo(&m.join("config.json"));
    let e = crate::load_artifact(&m).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("not a regular file"), "{e}");
}
