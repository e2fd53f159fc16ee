//! Any bytes as the `data.pkl` of an otherwise valid torch zip with two storages, so the fuzzer
//! spends its time in the restricted pickle reader and tensor rebuilding. Must never panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use lora_core::Checkpoint;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", o).unwrap();
    z.write_all(&[0u8; 64]).unwrap();
    z.start_file("archive/data/1", o).unwrap();
    z.write_all(&[0x3cu8; 6]).unwrap();
    z.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::torch_from_vec("fuzz.ckpt", archive(data)) {
        for n in c.names() {
            let _ = c.tensor_f32(n);
        }
    }
});
