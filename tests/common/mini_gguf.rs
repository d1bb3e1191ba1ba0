//! TEMPORARY: a minimal GGUF v3 tensor reader (F32 tensors only) so the oracle can be checked before the
//! crate's GGUF reader lands. Replaced by smallthinker::gguf once merged.

use std::collections::HashMap;

pub struct MiniGguf {
    bytes: Vec<u8>,
    tensors: HashMap<String, (Vec<u64>, u32, u64)>, // dims, ggml type, absolute offset
}

struct Cur<'a>(&'a [u8], usize);

impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.1 += 1,
            2 | 3 => self.1 += 2,
            4..=6 => self.1 += 4,
            10..=12 => self.1 += 8,
            8 => {
                self.string();
            }
            9 => {
                let et = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.skip_value(et);
                }
            }
            _ => panic!("bad GGUF value type {ty}"),
        }
    }
}

impl MiniGguf {
    pub fn open(path: &std::path::Path) -> MiniGguf {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut c = Cur(&bytes, 0);
        assert_eq!(c.take(4), b"GGUF");
        assert_eq!(c.u32(), 3);
        let n_tensors = c.u64();
        let n_kv = c.u64();
        for _ in 0..n_kv {
            c.string();
            let ty = c.u32();
            c.skip_value(ty);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string();
            let nd = c.u32();
            let dims: Vec<u64> = (0..nd).map(|_| c.u64()).collect();
            let ty = c.u32();
            let off = c.u64();
            infos.push((name, dims, ty, off));
        }
        let data_start = c.1.div_ceil(32) * 32;
        let tensors = infos
            .into_iter()
            .map(|(n, d, t, o)| (n, (d, t, data_start as u64 + o)))
            .collect();
        MiniGguf { bytes, tensors }
    }
}

impl super::reference::Weights for MiniGguf {
    fn tensor_f32(&self, name: &str) -> Option<(Vec<u64>, Vec<f32>)> {
        let (dims, ty, off) = self.tensors.get(name)?;
        assert_eq!(*ty, 0, "{name}: only F32 is supported here");
        let n: u64 = dims.iter().product();
        let raw = &self.bytes[*off as usize..][..n as usize * 4];
        Some((
            dims.clone(),
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        ))
    }
}
