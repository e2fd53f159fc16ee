//! The demo world the demo models are trained on: procedural images with tag captions, its tokenizer, and
//! measurements that read colour and shape back from an image.
//!
//! ```
//! use lora_cuda::demo::{World, Style, WordTokenizer, measure};
//! let world = World::new(64, Style::A);
//! let (scene, image) = world.sample(42);
//! let ids = WordTokenizer::demo().encode(&scene.caption()).unwrap();
//! assert_eq!(ids.len(), lora_cuda::demo::DEMO_CONTEXT_LEN);
//! let m = measure::analyse(&image).unwrap();
//! assert_eq!((m.colour, m.shape), (scene.colour, scene.shape));
//! ```

pub mod measure;
pub mod tokenizer;
pub mod world;

pub use tokenizer::WordTokenizer;
pub use world::{
    Background, Colour, Position, RgbImage8, Scene, Shading, Shape, Size, Style, World,
};

/// The demo text encoder's context length (BOS + up to 22 caption tokens + EOS).
pub const DEMO_CONTEXT_LEN: usize = 24;
