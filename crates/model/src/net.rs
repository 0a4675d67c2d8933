//! The two models and the config that rebuilds them.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};

use crate::conv::{conv3x3_forward, ModelBackend};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::IMAGE_SIZE;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Small 3-block CNN: the default, trains in about a minute on 2 CPU cores.
    #[default]
    Cnn,
    /// VGG16's 13 conv layers + Flatten -> Dense 256 -> ReLU -> Dropout 0.5 -> Dense K.
    Vgg16,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::Vgg16 => "vgg16",
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
    pub cnn_channels: Vec<usize>,
    /// `cnn`: width of the hidden dense layer.
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
        if self.classes.len() < 2 {
            return Err(ModelError::config("classes", "need at least 2 classes"));
        }
        if self.kind == ModelKind::Cnn {
            if self.cnn_channels.is_empty() || self.cnn_channels.len() > 5 || self.cnn_channels.contains(&0) {
                return Err(ModelError::config("cnn_channels", "1 to 5 positive widths (48 px halves per block)"));
            }
            if self.cnn_dense == 0 {
                return Err(ModelError::config("cnn_dense", "must be positive"));
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

#[derive(Module, Debug)]
pub enum Net<B: Backend> {
    Cnn(Cnn<B>),
    Vgg16(Vgg16<B>),
}

impl<B: ModelBackend> Net<B> {
    /// `[batch, 1, 48, 48]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Net::Cnn(m) => m.forward(x),
            Net::Vgg16(m) => m.forward(x),
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
        assert_eq!(vgg.forward(x).dims(), [2, 7]);
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
