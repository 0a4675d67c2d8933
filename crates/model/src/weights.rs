//! Pretrained VGG16 conv weights from a user's file, in torchvision's naming
//! (`features.N.weight` `[out, in, 3, 3]`, `features.N.bias` `[out]`).
//!
//! Formats: safetensors (`.safetensors`) or a PyTorch state dict (`.pth` / `.pt`, zip or
//! legacy pickle; a top-level `state_dict` key is looked into). Keys may carry a prefix
//! (`module.features.0.weight` from DataParallel, `vgg.features.0.weight`...).
//! ImageNet weights have 3 input channels; our input is grayscale, so the first layer's
//! weights are summed over RGB (gray replicated to RGB gives exactly that response).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::net::{Net, Vgg16, VGG16_TORCH_INDEX};

/// One tensor of a state dict, converted to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn werr(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Weights { path: path.to_path_buf(), message: message.to_string() }
}

/// Read every float tensor of a safetensors or PyTorch file.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, StateTensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let zip_or_pickle = bytes.starts_with(b"PK") || bytes.first() == Some(&0x80);
    if ext == "safetensors" || (!zip_or_pickle && ext != "pth" && ext != "pt") {
        read_safetensors(path, &bytes)
    } else {
        drop(bytes);
        read_pytorch(path)
    }
}

fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, StateTensor>> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes).map_err(|e| werr(path, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            _ => continue, // int buffers (num_batches_tracked...) are not weights
        };
        let shape = view.shape().to_vec();
        let data = TensorData::from_bytes_vec(view.data().to_vec(), shape.clone(), dtype)
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| werr(path, format!("{name}: {e:?}")))?;
        out.insert(name, StateTensor { shape, data });
    }
    Ok(out)
}

fn read_pytorch(path: &Path) -> Result<BTreeMap<String, StateTensor>> {
    use burn::store::pytorch::PytorchReader;
    let mut reader = PytorchReader::new(path).map_err(|e| werr(path, format!("not a PyTorch state dict: {e}")))?;
    if !reader.keys().iter().any(|k| k.contains("features.")) {
        if let Ok(inner) = PytorchReader::with_top_level_key(path, "state_dict") {
            reader = inner;
        }
    }
    let mut out = BTreeMap::new();
    for (name, snap) in reader.into_tensors() {
        if !matches!(snap.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            continue;
        }
        let data = snap.to_data().map_err(|e| werr(path, format!("{name}: {e:?}")))?;
        let shape = data.shape.to_vec();
        let data = data.convert::<f32>().into_vec::<f32>().map_err(|e| werr(path, format!("{name}: {e:?}")))?;
        out.insert(name, StateTensor { shape, data });
    }
    Ok(out)
}

/// Find `features.{idx}.{what}` allowing any prefix before `features.`.
fn find<'a>(sd: &'a BTreeMap<String, StateTensor>, idx: usize, what: &str) -> Option<(&'a str, &'a StateTensor)> {
    let suffix = format!("features.{idx}.{what}");
    sd.iter()
        .find(|(k, _)| *k == &suffix || k.ends_with(&format!(".{suffix}")))
        .map(|(k, v)| (k.as_str(), v))
}

/// Load the 13 conv layers of `vgg` from `path`; the head stays as initialized.
pub fn load_vgg16_features<B: crate::ModelBackend>(vgg: Vgg16<B>, path: &Path, device: &B::Device) -> Result<Vgg16<B>> {
    let sd = read_state_dict(path)?;
    let mut vgg = vgg;
    let mut features = Vec::with_capacity(vgg.features.len());
    for (i, mut conv) in std::mem::take(&mut vgg.features).into_iter().enumerate() {
        let idx = VGG16_TORCH_INDEX[i];
        let [cout, cin, kh, kw] = conv.weight.dims();
        let (wkey, w) = find(&sd, idx, "weight")
            .ok_or_else(|| werr(path, format!("no tensor features.{idx}.weight (conv {} of 13)", i + 1)))?;
        let mut wdata = w.data.clone();
        let mut wshape = w.shape.clone();
        // RGB -> gray for the first layer: sum the weights over the input channels.
        if i == 0 && cin == 1 && wshape.len() == 4 && wshape[1] == 3 {
            let (o, k) = (wshape[0], wshape[2] * wshape[3]);
            let mut g = vec![0.0f32; o * k];
            for oc in 0..o {
                for c in 0..3 {
                    for j in 0..k {
                        g[oc * k + j] += wdata[(oc * 3 + c) * k + j];
                    }
                }
            }
            wdata = g;
            wshape[1] = 1;
        }
        if wshape != [cout, cin, kh, kw] {
            return Err(werr(path, format!("{wkey}: shape {wshape:?}, the model needs {:?}", [cout, cin, kh, kw])));
        }
        conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(wdata, wshape), device));
        if conv.bias.is_some() {
            let (bkey, b) =
                find(&sd, idx, "bias").ok_or_else(|| werr(path, format!("no tensor features.{idx}.bias")))?;
            if b.shape != [cout] {
                return Err(werr(path, format!("{bkey}: shape {:?}, the model needs [{cout}]", b.shape)));
            }
            conv.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(b.data.clone(), [cout]), device)));
        }
        features.push(conv);
    }
    vgg.features = features;
    Ok(vgg)
}

/// Apply pretrained weights (and `freeze`) to a freshly initialized network.
pub fn apply_pretrained<B: crate::ModelBackend>(net: Net<B>, weights: Option<&Path>, freeze: bool, device: &B::Device) -> Result<Net<B>> {
    match net {
        Net::Vgg16(v) => {
            let v = match weights {
                Some(p) => load_vgg16_features(v, p, device)?,
                None => v,
            };
            Ok(Net::Vgg16(if freeze { v.freeze_features() } else { v }))
        }
        net => {
            if weights.is_some() || freeze {
                return Err(ModelError::config("weights", "pretrained weights and freeze apply to model \"vgg16\" only"));
            }
            Ok(net)
        }
    }
}
