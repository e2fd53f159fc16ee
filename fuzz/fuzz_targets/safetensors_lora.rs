//! Any bytes as a safetensors file: header parse, then the LoRA loader (kohya and PEFT), the
//! inspection hashes and every tensor's f32 conversion. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_core::{LoraFile, SafetensorsFile};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = SafetensorsFile::from_vec("fuzz.safetensors", data.to_vec()) else { return };
    for n in f.names() {
        let _ = f.tensor_f32(n);
    }
    let _ = lora_core::hash::sshs_hashes_of_file(&f);
    if let Ok(lora) = LoraFile::from_safetensors(&f) {
        let _ = lora.base_model();
        for m in lora.modules.iter().take(4) {
            let w: usize = m.weight_shape().iter().product();
            if m.down.len() + m.up.len() < 1 << 16 && w < 1 << 20 {
                let _ = m.delta(1.0);
            }
        }
    }
});
