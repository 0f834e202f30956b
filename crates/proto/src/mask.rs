//! Payload (un)masking, RFC 6455 §5.3: `byte[i] ^= key[i % 4]`.
//!
//! This module owns the only `unsafe` code of the protocol core: the call into the AVX2-compiled
//! loop after runtime detection, and the hand-written SIMD loops.
//! Every fast variant has the scalar twin [`unmask_scalar`] as its reference; the tests compare
//! them over every length 0–64 at every alignment and over random large buffers, and
//! `benches/unmask.rs` measures them side by side with the auto-vectorised word-at-a-time loop
//! [`unmask_word`] and a plain `copy_from_slice` (results in `docs/benchmarks/`).
//!
//! Masking and unmasking are the same operation. For data that continues a frame at payload
//! byte offset `off`, rotate the key first: [`rotate_key`]`(key, off)`.
//!
//! Dispatch ([`unmask`]): below [`SIMD_MIN_LEN`] bytes the word loop inlined at the call site;
//! otherwise, on x86-64 with AVX2 (runtime detection, cached by std), the same safe word loop
//! compiled with AVX2 enabled ([`x86::unmask_word_avx2`]); otherwise the word loop, which the
//! compiler vectorises with the baseline SIMD (SSE2 on x86-64, NEON on aarch64).
//!
//! The hand-written intrinsics ([`x86::unmask_sse2`], [`x86::unmask_avx2`], `neon::unmask_neon`)
//! are kept beside them, tested equal to the scalar twin and benchmarked, but not dispatched to:
//! on the machine measured (docs/benchmarks/2026-11-21-proto-kernels.md) none of them beat the
//! auto-vectorised loop compiled for the same instruction set, and the rule is to keep
//! hand-written SIMD only where it wins. (NEON was not measured: no aarch64 machine here; the
//! word loop auto-vectorises to NEON the same way it does to SSE2.) Re-run `cargo bench -p ringcast-proto --bench unmask` on a new target
//! before changing the dispatch.
#![allow(unsafe_code)]

/// Below this length [`unmask`] uses the inlined word loop: the call into the AVX2-compiled
/// function does not pay. Measured: at 64 B the inlined loop wins, from 1 KiB AVX2 wins clearly;
/// the crossover lies in between and moves with the harness.
pub const SIMD_MIN_LEN: usize = 128;

/// The key to use for bytes that start at payload offset `offset` of a frame.
#[inline]
pub fn rotate_key(key: [u8; 4], offset: u64) -> [u8; 4] {
    let mut k = key;
    k.rotate_left((offset % 4) as usize);
    k
}

/// Unmask (or mask) `buf` in place with the fastest implementation available on this CPU.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4]) {
    if buf.len() < SIMD_MIN_LEN {
        unmask_word(buf, key);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above at run time).
            unsafe { x86::unmask_word_avx2(buf, key) };
            return;
        }
    }
    unmask_word(buf, key);
}

/// Reference twin: one byte at a time, obviously correct.
pub fn unmask_scalar(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Word-at-a-time variant in safe Rust (8 bytes per step); the compiler auto-vectorises the
/// main loop (to SSE2 on x86-64: 2×16 bytes per iteration). This is the baseline the
/// hand-written SIMD has to beat.
#[inline(always)]
pub fn unmask_word(buf: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key) as u64;
    let key64 = k | (k << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(w) ^ key64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // Chunks are multiples of 8 bytes, so the key phase is unchanged for the tail.
    unmask_scalar(chunks.into_remainder(), key);
}

/// x86-64 variants. SSE2 is part of the x86-64 baseline; AVX2 needs runtime detection.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
        _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// SSE2, 16 bytes per step (64 per unrolled iteration), unaligned loads and stores.
    pub fn unmask_sse2(buf: &mut [u8], key: [u8; 4]) {
        // SAFETY: SSE2 is part of the x86-64 baseline; no memory is touched.
        let k = unsafe { _mm_set1_epi32(i32::from_ne_bytes(key)) };
        let mut blocks = buf.chunks_exact_mut(16);
        for block in &mut blocks {
            let p = block.as_mut_ptr() as *mut __m128i;
            // SAFETY: `block` is exactly 16 bytes we hold exclusively; loadu/storeu take any
            // alignment; SSE2 is always present on x86-64.
            unsafe {
                let v = _mm_loadu_si128(p);
                _mm_storeu_si128(p, _mm_xor_si128(v, k));
            }
        }
        // 16 is a multiple of 4: the key phase is unchanged for the tail.
        super::unmask_word(blocks.into_remainder(), key);
    }

    /// The safe word loop compiled with AVX2 enabled: what auto-vectorisation alone makes of
    /// AVX2 (measured against the hand-written [`unmask_avx2`]).
    ///
    /// # Safety
    /// The CPU must support AVX2 (`is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn unmask_word_avx2(buf: &mut [u8], key: [u8; 4]) {
        super::unmask_word(buf, key);
    }

    /// AVX2, 4×32 bytes per iteration then 32-byte steps, unaligned loads and stores.
    ///
    /// # Safety
    /// The CPU must support AVX2 (`is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn unmask_avx2(buf: &mut [u8], key: [u8; 4]) {
        let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut wide = buf.chunks_exact_mut(128);
        for block in &mut wide {
            let p = block.as_mut_ptr() as *mut __m256i;
            // SAFETY: `block` is exactly 128 bytes (4 × 32) we hold exclusively, so p..p+4 are
            // in bounds; loadu/storeu take any alignment; the caller guarantees AVX2.
            unsafe {
                let (a, b, c, d) = (
                    _mm256_loadu_si256(p),
                    _mm256_loadu_si256(p.add(1)),
                    _mm256_loadu_si256(p.add(2)),
                    _mm256_loadu_si256(p.add(3)),
                );
                _mm256_storeu_si256(p, _mm256_xor_si256(a, k));
                _mm256_storeu_si256(p.add(1), _mm256_xor_si256(b, k));
                _mm256_storeu_si256(p.add(2), _mm256_xor_si256(c, k));
                _mm256_storeu_si256(p.add(3), _mm256_xor_si256(d, k));
            }
        }
        let mut blocks = wide.into_remainder().chunks_exact_mut(32);
        for block in &mut blocks {
            let p = block.as_mut_ptr() as *mut __m256i;
            // SAFETY: `block` is exactly 32 bytes we hold exclusively; loadu/storeu take any
            // alignment; the caller guarantees AVX2.
            unsafe {
                let v = _mm256_loadu_si256(p);
                _mm256_storeu_si256(p, _mm256_xor_si256(v, k));
            }
        }
        // 128 and 32 are multiples of 4: the key phase is unchanged for the tail.
        super::unmask_word(blocks.into_remainder(), key);
    }
}

/// aarch64 variant. NEON is part of the aarch64 baseline.
#[cfg(target_arch = "aarch64")]
pub mod neon {
    use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};

    /// NEON, 16 bytes per step.
    pub fn unmask_neon(buf: &mut [u8], key: [u8; 4]) {
        // SAFETY: NEON is always present on aarch64; no memory is touched.
        let k = unsafe { vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key))) };
        let mut blocks = buf.chunks_exact_mut(16);
        for block in &mut blocks {
            let p = block.as_mut_ptr();
            // SAFETY: `block` is exactly 16 bytes we hold exclusively; vld1q/vst1q take any
            // alignment for u8 lanes; NEON is always present on aarch64.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
        }
        super::unmask_word(blocks.into_remainder(), key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Variant = (&'static str, fn(&mut [u8], [u8; 4]));

    fn variants() -> Vec<Variant> {
        #[allow(unused_mut)]
        let mut v: Vec<Variant> = vec![("unmask", unmask), ("word", unmask_word)];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(("sse2", x86::unmask_sse2));
            if std::is_x86_feature_detected!("avx2") {
                fn avx2(buf: &mut [u8], key: [u8; 4]) {
                    // SAFETY: only registered after the AVX2 check above.
                    unsafe { x86::unmask_avx2(buf, key) }
                }
                v.push(("avx2", avx2));
                fn word_avx2(buf: &mut [u8], key: [u8; 4]) {
                    // SAFETY: only registered after the AVX2 check above.
                    unsafe { x86::unmask_word_avx2(buf, key) }
                }
                v.push(("word_avx2", word_avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(("neon", neon::unmask_neon));
        v
    }

    #[test]
    fn every_length_0_to_64_at_every_alignment() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let backing: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for (name, f) in variants() {
            for align in 0..32 {
                for len in 0..=64 {
                    let mut want = backing.clone();
                    let mut got = backing.clone();
                    unmask_scalar(&mut want[align..align + len], key);
                    f(&mut got[align..align + len], key);
                    assert_eq!(want, got, "{name} len {len} align {align}");
                }
            }
        }
    }

    #[test]
    fn masking_twice_is_identity_and_rotation_continues() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut whole = orig.clone();
        unmask(&mut whole, key);
        // The same bytes unmasked in pieces with rotated keys.
        let mut pieces = orig.clone();
        let mut off = 0usize;
        for step in [1usize, 3, 5, 64, 7, 100, 820] {
            let end = (off + step).min(pieces.len());
            unmask(&mut pieces[off..end], rotate_key(key, off as u64));
            off = end;
        }
        assert_eq!(whole, pieces);
        unmask(&mut whole, key);
        assert_eq!(whole, orig);
    }

    proptest! {
        #[test]
        fn simd_equals_scalar(data in proptest::collection::vec(any::<u8>(), 0..5000),
                              key in any::<[u8; 4]>(), start in 0usize..64) {
            let start = start.min(data.len());
            for (name, f) in variants() {
                let mut want = data.clone();
                let mut got = data.clone();
                unmask_scalar(&mut want[start..], key);
                f(&mut got[start..], key);
                prop_assert_eq!(&want, &got, "{}", name);
            }
        }
    }
}
