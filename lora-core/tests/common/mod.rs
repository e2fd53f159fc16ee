//! Helpers shared by the integration tests: raw safetensors images, random LoRAs and minimal
//! PyTorch zip checkpoints built byte by byte (so the tests need no Python).
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use lora_core::{LoraFile, LoraModule, Metadata};
use ndarray::{ArrayD, IxDyn};

/// A safetensors image from a header string and data bytes (header length written as is).
pub fn raw_image(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn arr(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), values(seed, n)).unwrap()
}

/// A module with the shapes of a table row (`kernel` 0 for linear).
pub fn module(
    name: &str,
    conv_kernel: usize,
    inf: usize,
    outf: usize,
    rank: usize,
    alpha: Option<f32>,
    seed: u64,
) -> LoraModule {
    let (down, up) = if conv_kernel == 0 {
        (arr(&[rank, inf], seed), arr(&[outf, rank], seed + 1))
    } else {
        (
            arr(&[rank, inf, conv_kernel, conv_kernel], seed),
            arr(&[outf, rank, 1, 1], seed + 1),
        )
    };
    LoraModule::new(name, down, up, alpha).unwrap()
}

/// A LoRA with every module of a table at `rank`.
pub fn lora_from_table(table: lora_core::names::Table, rank: usize, alpha: f32) -> LoraFile {
    let modules = table
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let k = match e.kind {
                lora_core::ModuleKind::Linear => 0,
                lora_core::ModuleKind::Conv { kernel } => kernel[0],
            };
            module(
                e.name,
                k,
                e.in_features,
                e.out_features,
                rank,
                Some(alpha),
                i as u64,
            )
        })
        .collect();
    let mut m = Metadata::new();
    m.set_network_module("networks.lora")
        .set_network_dim(rank as i64);
    m.set_network_alpha(lora_core::PyValue::Float(alpha as f64));
    LoraFile::new(modules, m)
}

/// One tensor of a torch checkpoint.
pub struct TorchTensor<'a> {
    pub name: &'a str,
    pub storage: &'a str, // e.g. "HalfStorage"
    pub elem: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    pub offset: usize,
    pub storage_key: &'a str,
    pub storage_bytes: &'a [u8],
}

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend_from_slice(&(v as i32).to_le_bytes());
}

/// The pickle torch.save (protocol 2) writes for `{"state_dict": {name: tensor}}` (or the bare
/// dict), with `extra` pickle bytes inserted as one more value under the key `"extra"`.
pub fn torch_pickle(tensors: &[TorchTensor], wrap: bool, extra: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![0x80, 0x02, b'}'];
    if wrap {
        unicode(&mut p, "state_dict");
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    }
    for t in tensors {
        unicode(&mut p, t.name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        unicode(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{}\n", t.storage).as_bytes());
        unicode(&mut p, t.storage_key);
        unicode(&mut p, "cpu");
        int(&mut p, t.storage_bytes.len() / t.elem);
        p.extend_from_slice(b"tQ");
        int(&mut p, t.offset);
        p.push(b'(');
        for &d in &t.shape {
            int(&mut p, d);
        }
        p.push(b't');
        p.push(b'(');
        for &d in &t.stride {
            int(&mut p, d);
        }
        p.push(b't');
        p.push(0x89);
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        p.extend_from_slice(b"tR");
        p.push(b's');
    }
    if wrap {
        p.push(b's');
        unicode(&mut p, "global_step");
        int(&mut p, 470000);
        p.push(b's');
    }
    if let Some(x) = extra {
        unicode(&mut p, "extra");
        p.extend_from_slice(x);
        p.push(b's');
    }
    p.push(b'.');
    p
}

/// Writes a torch zip checkpoint (`archive/data.pkl`, `archive/data/<key>`, `archive/version`).
pub fn write_torch_zip(path: &Path, pickle: &[u8], storages: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    for (k, b) in storages {
        z.start_file(format!("archive/data/{k}"), opts).unwrap();
        z.write_all(b).unwrap();
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}
