//! A restricted pickle reader for PyTorch checkpoints: it rebuilds dicts, lists, tuples, scalars,
//! strings and tensors, and nothing else. No code runs: globals are looked up in a fixed allow-list
//! (tensor rebuilding, storage types, `OrderedDict`) and a short list of inert classes found in
//! Stable Diffusion checkpoints (Lightning's `ModelCheckpoint`, `TorchVersion`, numpy scalars),
//! which become opaque values that are never called. Any other global or opcode is an error.

use std::cell::RefCell;
use std::rc::Rc;

use crate::dtype::DType;

/// A storage referenced by a persistent id: `('storage', storage_type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: String,
}

/// A tensor rebuilt by `torch._utils._rebuild_tensor_v2`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(DType),
    Opaque,
}

/// A pickled value. Scalars keep their payload for debugging output even where unused.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    Opaque,
    Mark,
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PickleError {
    Malformed(String),
    Forbidden { module: String, name: String },
}

type R<T> = Result<T, PickleError>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(PickleError::Malformed(msg.into()))
}

const MAX_MEMO: usize = 1 << 20;
const MAX_STACK: usize = 1 << 20;

fn lookup_global(module: &str, name: &str) -> R<Global> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", s) if s.ends_with("Storage") => Global::Storage(match s {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => {
                return Err(PickleError::Forbidden {
                    module: module.into(),
                    name: name.into(),
                })
            }
        }),
        // Inert classes seen in SD checkpoints: kept as opaque values, never called.
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        | ("torch.torch_version", "TorchVersion")
        | ("numpy.core.multiarray", "scalar")
        | ("numpy", "dtype") => Global::Opaque,
        _ => {
            return Err(PickleError::Forbidden {
                module: module.into(),
                name: name.into(),
            })
        }
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: Vec<Option<Value>>,
    /// Every container ever memoized (a memo slot can be overwritten while its container is
    /// still referenced), emptied on drop to free reference cycles.
    shared: Vec<Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => bad(format!("truncated at byte {} (wanted {n} more)", self.pos)),
        }
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(i) = rest.iter().position(|&b| b == b'\n') else {
            return bad("unterminated line");
        };
        self.pos += i + 1;
        std::str::from_utf8(&rest[..i]).or_else(|_| bad("non-UTF-8 global name"))
    }
    fn push(&mut self, v: Value) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return bad("stack too deep");
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => bad("stack underflow"),
            Some(v) => Ok(v),
        }
    }
    fn top(&mut self) -> R<&mut Value> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => bad("stack underflow"),
            Some(v) => Ok(v),
        }
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(i) = self.stack.iter().rposition(|v| matches!(v, Value::Mark)) else {
            return bad("no MARK on the stack");
        };
        let items = self.stack.split_off(i + 1);
        self.stack.pop();
        Ok(items)
    }
    fn memo_put(&mut self, idx: usize) -> R<()> {
        if idx >= MAX_MEMO {
            return bad(format!("memo index {idx} too large"));
        }
        let v = self.top()?.clone();
        if matches!(v, Value::List(_) | Value::Dict(_)) {
            self.shared.push(v.clone());
        }
        if self.memo.len() <= idx {
            self.memo.resize(idx + 1, None);
        }
        self.memo[idx] = Some(v);
        Ok(())
    }
    fn memo_get(&mut self, idx: usize) -> R<()> {
        let v = self.memo.get(idx).cloned().flatten();
        match v {
            Some(v) => self.push(v),
            None => bad(format!("memo index {idx} not set")),
        }
    }
    fn string(&mut self, n: usize) -> R<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).or_else(|_| bad("string is not UTF-8"))?;
        self.push(Value::Str(Rc::from(s)))
    }
}

fn as_usize_vec(v: &Value, what: &str) -> R<Vec<usize>> {
    let Value::Tuple(t) = v else {
        return bad(format!("{what} is not a tuple"));
    };
    t.iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => bad(format!("{what} holds a non-negative-int")),
        })
        .collect()
}

fn call(f: Global, args: Value) -> R<Value> {
    let Value::Tuple(args) = args else {
        return bad("REDUCE arguments are not a tuple");
    };
    match f {
        Global::OrderedDict => {
            if !args.is_empty() {
                return bad("OrderedDict called with arguments");
            }
            Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
        }
        Global::RebuildTensorV2 => {
            if args.len() < 4 {
                return bad("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
            }
            let Value::Storage(s) = &args[0] else {
                return bad("_rebuild_tensor_v2: first argument is not a storage");
            };
            let Value::Int(off) = args[1] else {
                return bad("_rebuild_tensor_v2: offset is not an int");
            };
            if off < 0 {
                return bad("_rebuild_tensor_v2: negative offset");
            }
            let shape = as_usize_vec(&args[2], "size")?;
            let stride = as_usize_vec(&args[3], "stride")?;
            if shape.len() != stride.len() {
                return bad("_rebuild_tensor_v2: size and stride differ in length");
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: (**s).clone(),
                offset: off as usize,
                shape,
                stride,
            })))
        }
        Global::RebuildParameter => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => bad("_rebuild_parameter: first argument is not a tensor"),
        },
        Global::Storage(_) => bad("a storage type was called"),
        Global::Opaque => Ok(Value::Opaque),
    }
}

fn persistent_load(pid: Value) -> R<Value> {
    let Value::Tuple(t) = pid else {
        return bad("persistent id is not a tuple");
    };
    if t.len() < 3 {
        return bad("persistent id tuple too short");
    }
    match &t[0] {
        Value::Str(s) if &**s == "storage" => {}
        _ => return bad("persistent id is not a ('storage', ...) tuple"),
    }
    let Value::Global(Global::Storage(dtype)) = t[1] else {
        return bad("persistent id names no storage type");
    };
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return bad("storage key is not a string"),
    };
    Ok(Value::Storage(Rc::new(StorageRef { dtype, key })))
}

impl Drop for Machine<'_> {
    /// Containers can only be shared (and so form reference cycles, e.g. a list appended to
    /// itself) through the memo; emptying every container that was memoized frees such cycles.
    fn drop(&mut self) {
        for v in &self.shared {
            match v {
                Value::List(l) => l.borrow_mut().clear(),
                Value::Dict(d) => d.borrow_mut().clear(),
                _ => {}
            }
        }
    }
}

/// Runs the pickle in `data` and hands its top value to `f` (before the reader's memo is torn
/// down, which empties shared containers).
pub(crate) fn load_with<T>(data: &[u8], f: impl FnOnce(Value) -> T) -> R<T> {
    let top = load_inner(data)?;
    Ok(f(top.0))
}

/// Test helper: the top value, with a top-level dict's entries copied out before the memo is emptied.
#[cfg(test)]
pub(crate) fn load(data: &[u8]) -> R<Value> {
    load_with(data, |v| match v {
        Value::Dict(d) => Value::Dict(Rc::new(RefCell::new(d.borrow().clone()))),
        other => other,
    })
}

struct Loaded<'a>(Value, #[allow(dead_code)] Machine<'a>);

fn load_inner(data: &[u8]) -> R<Loaded<'_>> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: Vec::new(),
        shared: Vec::new(),
    };
    loop {
        let at = m.pos;
        let op = m.u8()?;
        match op {
            0x80 => {
                let p = m.u8()?;
                if p > 5 {
                    return bad(format!("unsupported pickle protocol {p}"));
                }
            }
            0x95 => {
                m.u64()?; // FRAME: length only, data follows inline
            }
            b'.' => {
                let top = m.pop()?;
                return Ok(Loaded(top, m));
            }
            b'(' => m.push(Value::Mark)?,
            b'}' => m.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
            b']' => m.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
            b')' => m.push(Value::Tuple(Rc::new(Vec::new())))?,
            b't' => {
                let items = m.pop_mark()?;
                m.push(Value::Tuple(Rc::new(items)))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if m.stack.len() < n {
                    return bad("stack underflow");
                }
                let items = m.stack.split_off(m.stack.len() - n);
                if items.iter().any(|v| matches!(v, Value::Mark)) {
                    return bad("MARK inside a TUPLE");
                }
                m.push(Value::Tuple(Rc::new(items)))?
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.push(Value::List(Rc::new(RefCell::new(items))))?
            }
            b'd' => {
                let items = m.pop_mark()?;
                if items.len() % 2 != 0 {
                    return bad("DICT with an odd number of items");
                }
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                m.push(Value::Dict(Rc::new(RefCell::new(pairs))))?
            }
            b'N' => m.push(Value::None)?,
            0x88 => m.push(Value::Bool(true))?,
            0x89 => m.push(Value::Bool(false))?,
            b'J' => {
                let v = m.u32()? as i32;
                m.push(Value::Int(v as i64))?
            }
            b'K' => {
                let v = m.u8()?;
                m.push(Value::Int(v as i64))?
            }
            b'M' => {
                let v = m.u16()?;
                m.push(Value::Int(v as i64))?
            }
            0x8a => {
                let n = m.u8()? as usize;
                let b = m.take(n)?;
                if n > 8 {
                    return bad("LONG1 integer wider than 64 bits");
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(b);
                m.push(Value::Int(i64::from_le_bytes(buf)))?
            }
            b'G' => {
                let b = m.take(8)?;
                m.push(Value::Float(f64::from_be_bytes(
                    b.try_into().unwrap_or([0; 8]),
                )))?
            }
            b'X' => {
                let n = m.u32()? as usize;
                m.string(n)?
            }
            0x8c => {
                let n = m.u8()? as usize;
                m.string(n)?
            }
            0x8d => {
                let n = usize::try_from(m.u64()?).or_else(|_| bad("string too long"))?;
                m.string(n)?
            }
            b'T' | b'B' => {
                let n = m.u32()? as usize;
                let b = m.take(n)?;
                m.push(Value::Bytes(Rc::from(b)))?
            }
            b'U' | b'C' => {
                let n = m.u8()? as usize;
                let b = m.take(n)?;
                m.push(Value::Bytes(Rc::from(b)))?
            }
            b'q' => {
                let i = m.u8()? as usize;
                m.memo_put(i)?
            }
            b'r' => {
                let i = m.u32()? as usize;
                m.memo_put(i)?
            }
            0x94 => {
                let i = m.memo.len();
                m.memo_put(i)?
            }
            b'h' => {
                let i = m.u8()? as usize;
                m.memo_get(i)?
            }
            b'j' => {
                let i = m.u32()? as usize;
                m.memo_get(i)?
            }
            b'a' => {
                let v = m.pop()?;
                match m.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    _ => return bad("APPEND to a non-list"),
                }
            }
            b'e' => {
                let items = m.pop_mark()?;
                match m.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    _ => return bad("APPENDS to a non-list"),
                }
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                match m.top()? {
                    Value::Dict(d) => d.borrow_mut().push((k, v)),
                    _ => return bad("SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = m.pop_mark()?;
                if items.len() % 2 != 0 {
                    return bad("SETITEMS with an odd number of items");
                }
                match m.top()? {
                    Value::Dict(d) => {
                        let mut d = d.borrow_mut();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return bad("SETITEMS on a non-dict"),
                }
            }
            b'c' => {
                let module = m.line()?.to_string();
                let name = m.line()?.to_string();
                m.push(Value::Global(lookup_global(&module, &name)?))?
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                match (module, name) {
                    (Value::Str(a), Value::Str(b)) => {
                        m.push(Value::Global(lookup_global(&a, &b)?))?
                    }
                    _ => return bad("STACK_GLOBAL needs two strings"),
                }
            }
            b'R' => {
                let args = m.pop()?;
                let f = m.pop()?;
                let Value::Global(g) = f else {
                    return bad("REDUCE on a value that is not an allowed global");
                };
                m.push(call(g, args)?)?
            }
            0x81 => {
                let args = m.pop()?;
                let cls = m.pop()?;
                let Value::Global(g) = cls else {
                    return bad("NEWOBJ on a value that is not an allowed global");
                };
                m.push(call(g, args)?)?
            }
            b'b' => {
                // BUILD sets state; allowed only on opaque objects and OrderedDicts (no-op).
                let _state = m.pop()?;
                match m.top()? {
                    Value::Opaque | Value::Dict(_) | Value::Tensor(_) => {}
                    _ => return bad("BUILD on an unsupported object"),
                }
            }
            b'Q' => {
                let pid = m.pop()?;
                m.push(persistent_load(pid)?)?
            }
            other => return bad(format!("opcode 0x{other:02x} at byte {at} is not allowed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_global_is_refused() {
        // GLOBAL 'os system', then REDUCE — the classic code-execution pickle.
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            load(p).unwrap_err(),
            PickleError::Forbidden {
                module: "os".into(),
                name: "system".into()
            }
        );
        let p = b"\x80\x02cbuiltins\neval\n.";
        assert!(matches!(load(p), Err(PickleError::Forbidden { .. })));
    }

    #[test]
    fn self_referencing_list_is_freed() {
        // l = []; l.append(l): a reference cycle through the memo.
        let weak = load_with(b"\x80\x02]q\x00h\x00a.", |v| match v {
            Value::List(l) => Rc::downgrade(&l),
            _ => panic!("not a list"),
        })
        .unwrap();
        assert!(weak.upgrade().is_none(), "cycle leaked");
    }

    #[test]
    fn dict_of_ints() {
        // pickle.dumps({'a': 1, 'b': 300}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02M,\x01u.";
        let Value::Dict(d) = load(p).unwrap() else {
            panic!()
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        assert!(matches!(d[1].1, Value::Int(300)));
    }

    #[test]
    fn truncated_and_unknown_opcode() {
        assert!(matches!(
            load(b"\x80\x02}q"),
            Err(PickleError::Malformed(_))
        ));
        assert!(matches!(load(b"\x80\x02i"), Err(PickleError::Malformed(_))));
        assert!(matches!(load(b""), Err(PickleError::Malformed(_))));
    }
}
