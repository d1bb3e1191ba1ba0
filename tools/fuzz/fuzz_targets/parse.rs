//! Fuzzes `gguf::parse`: any input must give Ok or Err, never a panic, abort, huge allocation or out-of-bounds read;
//! and whatever it accepts must be internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smallthinker::gguf::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse(data) else { return };
    assert!(h.alignment.is_power_of_two());
    assert_eq!(h.data_offset % h.alignment, 0);
    let mut expected = 0u64;
    for t in &h.tensors {
        assert_eq!(t.offset, expected, "offsets are the padded running sum");
        let start = h.data_offset + t.offset;
        assert!(
            data.get(start as usize..(start + t.size) as usize).is_some(),
            "tensor {} out of range",
            t.name
        );
        assert!(h.tensor(&t.name).is_some());
        expected = t.offset + t.size.div_ceil(h.alignment) * h.alignment;
    }
    for (k, _) in &h.metadata {
        assert!(h.get(k).is_some());
    }
});
