//! The Stable Diffusion model family: configurations, module names (kohya LoRA rules and the LDM checkpoint
//! layout), the U-Net and the CLIP text encoder.
//!
//! ```
//! use lora_cuda::model::{UNetConfig, ClipConfig, LoraSpec, lora_targets};
//! let spec = LoraSpec { network_dim: 4, network_alpha: 1.0, ..LoraSpec::default() };
//! let targets = lora_targets(&UNetConfig::sd15(), Some(&ClipConfig::clip_l()), &spec);
//! assert_eq!(targets.len(), 72 + 192);
//! assert_eq!(targets[0].lora_name, "lora_te_text_model_encoder_layers_0_self_attn_k_proj");
//! ```

pub mod checkpoint;
pub mod config;
pub mod names;

pub use config::{BlockKind, ClipConfig, LayerInfo, LayerKind, UNetConfig};
pub use names::{lora_targets, unet_diffusers_to_ldm, LoraSpec, LoraTarget};
pub mod lora_net;
pub mod pipeline;
pub mod sd;

pub use lora_net::LoraNetwork;
pub use sd::SdModel;
