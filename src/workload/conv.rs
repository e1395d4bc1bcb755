//! Convolution parameters (`kind = "conv"`): one 2-D convolution's forward and backward (data and
//! weight gradients), in the shapes of ResNet-50's layers, as cuDNN runs them under PyTorch.

use serde::{Deserialize, Serialize};

use super::Dtype;

/// A ResNet-50 layer (He et al., 2016; torchvision's resnet50 at 224×224): the 7×7 stem, or the
/// 3×3 convolution of a stage's bottleneck blocks; `custom` takes every dimension from the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvLayer {
    /// 3 → 64 channels, 224×224, 7×7, stride 2.
    Conv1,
    /// 64 → 64, 56×56, 3×3.
    Res2,
    /// 128 → 128, 28×28, 3×3.
    #[default]
    Res3,
    /// 256 → 256, 14×14, 3×3.
    Res4,
    /// 512 → 512, 7×7, 3×3.
    Res5,
    Custom,
}

/// How activations and weights are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvLayout {
    /// PyTorch's default, channels before rows.
    #[default]
    Nchw,
    /// NHWC in memory (`torch.channels_last`): what tensor-core convolutions want.
    ChannelsLast,
}

/// The dimensions of one convolution (square input and kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Input height and width.
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Output height and width.
    pub fn out_size(&self) -> usize {
        (self.size + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

impl ConvLayer {
    fn shape(self) -> Option<ConvShape> {
        let stage = |channels: usize, size: usize| ConvShape {
            in_channels: channels,
            out_channels: channels,
            size,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        Some(match self {
            ConvLayer::Conv1 => ConvShape {
                in_channels: 3,
                out_channels: 64,
                size: 224,
                kernel: 7,
                stride: 2,
                padding: 3,
            },
            ConvLayer::Res2 => stage(64, 56),
            ConvLayer::Res3 => stage(128, 28),
            ConvLayer::Res4 => stage(256, 14),
            ConvLayer::Res5 => stage(512, 7),
            ConvLayer::Custom => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvParams {
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default)]
    pub layer: ConvLayer,
    /// Overrides of the layer's dimensions (all but `stride` required for `custom`); a changed
    /// kernel keeps the output size ("same" padding, kernel / 2).
    #[serde(default)]
    pub in_channels: Option<usize>,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default)]
    pub size: Option<usize>,
    #[serde(default)]
    pub kernel: Option<usize>,
    #[serde(default)]
    pub stride: Option<usize>,
    #[serde(default)]
    pub layout: ConvLayout,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    /// `torch.backends.cudnn.benchmark`: cuDNN times its algorithms for the shape first (CUDA
    /// only; a sweep axis).
    #[serde(default)]
    pub cudnn_benchmark: bool,
}

fn default_batch() -> usize {
    32
}
fn default_dtype() -> Dtype {
    Dtype::Fp32
}

impl ConvParams {
    /// The convolution after overrides.
    pub fn shape(&self) -> Result<ConvShape, String> {
        let need = |v: Option<usize>, k: &str| v.ok_or_else(|| format!("layer `custom` needs `{k}`"));
        let base = match self.layer.shape() {
            Some(s) => s,
            None => ConvShape {
                in_channels: need(self.in_channels, "in_channels")?,
                out_channels: need(self.out_channels, "out_channels")?,
                size: need(self.size, "size")?,
                kernel: need(self.kernel, "kernel")?,
                stride: 1,
                padding: 0,
            },
        };
        let kernel = self.kernel.unwrap_or(base.kernel);
        let s = ConvShape {
            in_channels: self.in_channels.unwrap_or(base.in_channels),
            out_channels: self.out_channels.unwrap_or(base.out_channels),
            size: self.size.unwrap_or(base.size),
            kernel,
            stride: self.stride.unwrap_or(base.stride),
            padding: if self.kernel.is_some() || self.layer == ConvLayer::Custom {
                kernel / 2
            } else {
                base.padding
            },
        };
        if [s.in_channels, s.out_channels, s.size, s.kernel, s.stride].contains(&0) {
            return Err("in_channels, out_channels, size, kernel and stride must be positive".into());
        }
        if s.kernel > s.size + 2 * s.padding {
            return Err(format!(
                "kernel ({}) larger than the padded input ({})",
                s.kernel,
                s.size + 2 * s.padding
            ));
        }
        Ok(s)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("batch must be positive".into());
        }
        if self.dtype == Dtype::Fp8 {
            return Err("conv supports fp32, tf32, fp16 and bf16, not fp8".into());
        }
        self.shape().map(|_| ())
    }

    /// FLOPs of one forward pass: 2·N·K·C·R·S·P·Q.
    pub fn forward_flops(&self) -> f64 {
        let Ok(s) = self.shape() else { return f64::NAN };
        let out = s.out_size() as f64;
        2.0 * self.batch as f64
            * s.out_channels as f64
            * s.in_channels as f64
            * (s.kernel * s.kernel) as f64
            * out
            * out
    }

    /// FLOPs of one measured call: the forward, the data gradient and the weight gradient, each
    /// the forward's count.
    pub fn flops(&self) -> f64 {
        3.0 * self.forward_flops()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> ConvParams {
        let p: ConvParams = serde_json::from_str(json).unwrap();
        p.check().unwrap();
        p
    }

    #[test]
    fn resnet50_layers_keep_their_output_sizes() {
        let out = |layer: &str| {
            params(&format!(r#"{{"layer":"{layer}"}}"#))
                .shape()
                .unwrap()
                .out_size()
        };
        assert_eq!(out("conv1"), 112);
        assert_eq!(
            [out("res2"), out("res3"), out("res4"), out("res5")],
            [56, 28, 14, 7]
        );
    }

    #[test]
    fn flops_by_hand() {
        // res5: 2 · 32 · 512 · 512 · 9 · 7 · 7 forward, three passes.
        let p = params(r#"{"layer":"res5"}"#);
        assert_eq!(p.forward_flops(), 2.0 * 32.0 * 512.0 * 512.0 * 9.0 * 49.0);
        assert_eq!(p.flops(), 3.0 * p.forward_flops());
        assert_eq!(
            (p.layout, p.dtype, p.cudnn_benchmark),
            (ConvLayout::Nchw, Dtype::Fp32, false)
        );
    }

    #[test]
    fn overrides_and_custom_layers() {
        let p = params(r#"{"layer":"res5","in_channels":64,"out_channels":32,"layout":"channels_last"}"#);
        let s = p.shape().unwrap();
        assert_eq!(
            (s.in_channels, s.out_channels, s.size, s.out_size()),
            (64, 32, 7, 7)
        );
        assert_eq!(p.layout, ConvLayout::ChannelsLast);
        let c =
            params(r#"{"layer":"custom","in_channels":8,"out_channels":8,"size":10,"kernel":5,"stride":2}"#);
        assert_eq!(c.shape().unwrap().out_size(), 5);
        let missing: ConvParams = serde_json::from_str(r#"{"layer":"custom","in_channels":8}"#).unwrap();
        assert!(missing.check().unwrap_err().contains("needs `out_channels`"));
        let fp8: ConvParams = serde_json::from_str(r#"{"dtype":"fp8"}"#).unwrap();
        assert!(fp8.check().unwrap_err().contains("not fp8"));
    }
}
