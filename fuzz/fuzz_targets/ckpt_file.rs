//! Any bytes as a PyTorch zip checkpoint (zip container + pickle + storages). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_core::Checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::torch_from_vec("fuzz.ckpt", data.to_vec()) {
        for n in c.names() {
            let _ = c.tensor_f32(n);
        }
    }
});
