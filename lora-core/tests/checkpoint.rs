//! Checkpoints: a PyTorch zip `.ckpt` written byte by byte (protocol-2 pickle, stored zip entries,
//! as torch.save does) reads back exactly; strided and offset tensors are rebuilt; a safetensors
//! checkpoint reads the same; a checkpoint converts to safetensors through the generic writer.

mod common;

use common::{torch_pickle, write_torch_zip, TorchTensor};
use lora_core::{BaseModel, Checkpoint, DType, Metadata, TensorView};

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn torch_zip_checkpoint_reads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.ckpt");
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let s0 = f16_bytes(&a);
    // Storage 1 holds 12 floats; "t" is a transposed 3x2 view of the first 6, "o" is [2] at offset 8.
    let b: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let s1 = f32_bytes(&b);
    let te = "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight";
    let tensors = [
        TorchTensor {
            name: te,
            storage: "HalfStorage",
            elem: 2,
            shape: vec![2, 3],
            stride: vec![3, 1],
            offset: 0,
            storage_key: "0",
            storage_bytes: &s0,
        },
        TorchTensor {
            name: "t",
            storage: "FloatStorage",
            elem: 4,
            shape: vec![3, 2],
            stride: vec![1, 3],
            offset: 0,
            storage_key: "1",
            storage_bytes: &s1,
        },
        TorchTensor {
            name: "o",
            storage: "FloatStorage",
            elem: 4,
            shape: vec![2],
            stride: vec![1],
            offset: 8,
            storage_key: "1",
            storage_bytes: &s1,
        },
    ];
    write_torch_zip(
        &p,
        &torch_pickle(&tensors, true, None),
        &[("0", &s0), ("1", &s1)],
    );

    let c = Checkpoint::open(&p).unwrap();
    assert_eq!(c.names(), vec![te, "o", "t"]);
    assert_eq!(c.info(te).unwrap(), (DType::F16, vec![2, 3]));
    assert_eq!(
        c.tensor_f32(te)
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        a
    );
    // Transposed: t[i][j] = b[i + 3j].
    let t = c.tensor_f32("t").unwrap();
    for i in 0..3 {
        for j in 0..2 {
            assert_eq!(t[[i, j]], b[i + 3 * j]);
        }
    }
    assert_eq!(
        c.tensor_f32("o")
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![8.0, 9.0]
    );
    assert_eq!(c.base_model(), BaseModel::Sd1);
    // The missing `text_model.` variant resolves (§8.1).
    let want = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
    assert_eq!(c.resolve(want).as_deref(), Some(te));

    // Convert to safetensors through the generic writer, keeping dtypes, and compare.
    let out = dir.path().join("model.safetensors");
    let raws: Vec<_> = c
        .names()
        .into_iter()
        .map(|n| (n.to_string(), c.raw(n).unwrap()))
        .collect();
    let views: Vec<(String, TensorView)> = raws
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                TensorView::from_bytes(r.dtype, r.shape.clone(), r.data.as_ref()).unwrap(),
            )
        })
        .collect();
    lora_core::write_safetensors(&out, &views, &Metadata::new()).unwrap();
    let s = Checkpoint::open(&out).unwrap();
    assert_eq!(s.names(), c.names());
    for n in c.names() {
        assert_eq!(s.info(n).unwrap(), c.info(n).unwrap());
        assert_eq!(s.tensor_f32(n).unwrap(), c.tensor_f32(n).unwrap());
    }
    // F32 tensors of a safetensors file are viewed in place, others converted.
    let st = lora_core::SafetensorsFile::open(&out).unwrap();
    assert!(st.tensor_f32_cow("o").unwrap().is_view());
    assert!(!st.tensor_f32_cow(te).unwrap().is_view());
    assert_eq!(
        st.tensor_f32_cow("t").unwrap().to_owned(),
        c.tensor_f32("t").unwrap()
    );
    let all: Vec<_> = s.iter_f32().map(|(n, r)| (n, r.unwrap().len())).collect();
    assert_eq!(
        all,
        vec![
            (te.to_string(), 6),
            ("o".to_string(), 2),
            ("t".to_string(), 6)
        ]
    );
}

#[test]
fn bare_state_dict_and_nan_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bare.pt");
    let s0 = f32_bytes(&[1.0, f32::NAN]);
    let tensors = [TorchTensor {
        name: "model.diffusion_model.out.2.weight",
        storage: "FloatStorage",
        elem: 4,
        shape: vec![2],
        stride: vec![1],
        offset: 0,
        storage_key: "0",
        storage_bytes: &s0,
    }];
    write_torch_zip(&p, &torch_pickle(&tensors, false, None), &[("0", &s0)]);
    let c = Checkpoint::open(&p).unwrap();
    let e = c
        .tensor_f32("model.diffusion_model.out.2.weight")
        .unwrap_err();
    assert!(
        matches!(e, lora_core::Error::NonFinite { index: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("bare.pt") && e.to_string().contains("out.2.weight"));
    // raw() still gives the bytes, for copying through.
    assert_eq!(
        c.raw("model.diffusion_model.out.2.weight")
            .unwrap()
            .data
            .as_ref(),
        &s0[..]
    );
}
