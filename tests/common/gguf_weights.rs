//! The oracle's weights from a GGUF file, dequantized with ggml's `to_float` (smallthinker::quant).

use smallthinker::gguf::GgufFile;

impl super::reference::Weights for GgufFile {
    fn tensor_f32(&self, name: &str) -> Option<(Vec<u64>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let n = usize::try_from(t.n_elements()).expect("tensor fits in memory");
        let data = smallthinker::quant::dequantize(t.ty, self.tensor_data(t), n)
            .unwrap_or_else(|e| panic!("{name}: dequantize {}: {e}", t.ty));
        Some((t.dims.clone(), data))
    }
}
