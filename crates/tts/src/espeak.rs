//! espeak-ng, in this process, through Debian's `libespeak-ng`.
//!
//! espeak-ng keeps its state in C globals (one voice, one callback, one output mode), so
//! every call goes through one process-wide lock, and the library is initialised once, in
//! synchronous mode: `espeak_Synth` returns only when the text is spoken, calling our callback
//! on the same thread with each piece of audio. The callback copies the samples into a
//! thread-local buffer and stops synthesis when the buffer reaches its bound.
//!
//! This is the only module of our crates with `unsafe` code; each block says why it holds.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_int, c_short, CString};
use std::sync::{Mutex, OnceLock};

use espeakng_sys as sys;

use crate::TtsError;

/// Longest text one request may carry, in bytes (a caption is at most 1,000 characters).
pub const MAX_TEXT_BYTES: usize = 4_096;

/// Most audio one request may produce: 30 s at espeak-ng's 22,050 Hz. A longer result is cut
/// there (espeak-ng is told to stop), so a hostile text cannot make us buffer minutes of audio.
pub const MAX_SAMPLES: usize = 30 * 22_050;

/// espeak-ng's sample rate, learnt at initialisation.
static ENGINE: OnceLock<Result<Mutex<u32>, String>> = OnceLock::new();

thread_local! {
    /// Audio of the request in progress on this thread (the callback runs on the thread that
    /// called `espeak_Synth`, in synchronous mode).
    static OUTPUT: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// Called by espeak-ng with each piece of audio. Returns 1 to stop synthesis.
///
/// # Safety
/// espeak-ng passes either a null pointer or `count` valid samples.
unsafe extern "C" fn on_audio(
    samples: *mut c_short,
    count: c_int,
    _events: *mut sys::espeak_EVENT,
) -> c_int {
    let Ok(count) = usize::try_from(count) else {
        return 0;
    };
    if samples.is_null() || count == 0 {
        return 0;
    }
    // SAFETY: espeak-ng guarantees `samples` points at `count` samples it owns for the length
    // of this call; we copy them out before returning and keep no reference.
    let piece = unsafe { std::slice::from_raw_parts(samples, count) };
    OUTPUT.with(|out| {
        let mut out = out.borrow_mut();
        let room = MAX_SAMPLES.saturating_sub(out.len());
        out.extend_from_slice(&piece[..count.min(room)]);
        c_int::from(out.len() >= MAX_SAMPLES)
    })
}

fn engine() -> Result<&'static Mutex<u32>, TtsError> {
    let state = ENGINE.get_or_init(|| {
        // SAFETY: called once (OnceLock), before any other espeak-ng function. A null path
        // means the system's espeak-ng-data. DONT_EXIT: without it, espeak-ng calls exit()
        // when its data is missing, which would end the call instead of reporting it.
        let rate = unsafe {
            sys::espeak_Initialize(
                sys::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                sys::espeakINITIALIZE_DONT_EXIT as c_int,
            )
        };
        if rate <= 0 {
            return Err(
                "espeak-ng could not start (is espeak-ng-data installed? bash scripts/install-deps)"
                    .to_string(),
            );
        }
        // SAFETY: `on_audio` has the callback's exact signature and lives for the program.
        unsafe { sys::espeak_SetSynthCallback(Some(on_audio)) };
        Ok(Mutex::new(rate as u32))
    });
    state.as_ref().map_err(|e| TtsError::Engine(e.clone()))
}

/// espeak-ng's output sample rate (Hz).
pub fn sample_rate() -> Result<u32, TtsError> {
    let lock = engine()?;
    let rate = *lock.lock().unwrap_or_else(|e| e.into_inner());
    Ok(rate)
}

/// Whether espeak-ng has a voice for this language code (for example `es`).
pub fn has_voice(language: &str) -> Result<bool, TtsError> {
    let lock = engine()?;
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    Ok(select_voice(language).is_ok())
}

/// Chooses the voice; call with the lock held.
fn select_voice(language: &str) -> Result<(), TtsError> {
    if language.is_empty()
        || language.len() > 16
        || !language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TtsError::NoVoice(language.to_string()));
    }
    let name = CString::new(language).map_err(|_| TtsError::NoVoice(language.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string for the length of the call; espeak-ng
    // copies what it keeps.
    let status = unsafe { sys::espeak_SetVoiceByName(name.as_ptr()) };
    if status == sys::espeak_ERROR_EE_OK {
        Ok(())
    } else {
        Err(TtsError::NoVoice(language.to_string()))
    }
}

/// Speaks `text` in `language` at `words_per_minute`; returns 16-bit samples at
/// [`sample_rate`]. Blocks for the synthesis (about a tenth of the speech's length).
pub fn synthesize(language: &str, text: &str, words_per_minute: u16) -> Result<Vec<i16>, TtsError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(TtsError::TooLong(text.len()));
    }
    // espeak-ng reads a C string: a NUL would end the text early, so it is refused.
    let text = CString::new(text).map_err(|_| TtsError::BadText)?;
    let lock = engine()?;
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    select_voice(language)?;
    let rate = c_int::from(words_per_minute).clamp(80, 450);
    // SAFETY: a plain setter of an integer parameter; the lock is held.
    unsafe { sys::espeak_SetParameter(sys::espeak_PARAMETER_espeakRATE, rate, 0) };
    OUTPUT.with(|out| out.borrow_mut().clear());
    let bytes = text.as_bytes_with_nul();
    // SAFETY: `text` is valid UTF-8 (it came from a &str), NUL-terminated, and lives until the
    // call returns; in synchronous mode espeak-ng is done with it (and has called `on_audio`
    // for every piece) when `espeak_Synth` returns. No identifier or user data is asked for.
    let status = unsafe {
        sys::espeak_Synth(
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            sys::espeak_POSITION_TYPE_POS_CHARACTER,
            0,
            sys::espeakCHARS_UTF8,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let samples = OUTPUT.with(|out| std::mem::take(&mut *out.borrow_mut()));
    if status != sys::espeak_ERROR_EE_OK {
        return Err(TtsError::Engine(format!("espeak_Synth failed ({status})")));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_english_and_spanish_at_its_own_rate() {
        let rate = sample_rate().unwrap();
        assert_eq!(rate, 22_050);
        for language in ["en", "es"] {
            let samples = synthesize(language, "One two three.", 160).unwrap();
            let seconds = samples.len() as f64 / f64::from(rate);
            assert!((0.5..3.0).contains(&seconds), "{language}: {seconds} s");
            let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(peak > 3_000, "{language}: peak {peak}: silent");
        }
    }

    #[test]
    fn refuses_unknown_voices_hostile_codes_and_nul() {
        for bad in ["", "xx-nonexistent", "../../etc/passwd", "es\0", "a b"] {
            assert!(
                matches!(synthesize(bad, "hello", 160), Err(TtsError::NoVoice(_))),
                "{bad:?}"
            );
        }
        assert!(has_voice("de").unwrap());
        assert!(!has_voice("zz").unwrap());
        assert!(matches!(
            synthesize("en", "a\0b", 160),
            Err(TtsError::BadText)
        ));
        let long = "a ".repeat(MAX_TEXT_BYTES);
        assert!(matches!(
            synthesize("en", &long, 160),
            Err(TtsError::TooLong(_))
        ));
    }

    #[test]
    fn output_is_bounded() {
        // ~2,000 words would be minutes of speech: cut at the bound.
        let text = "seven ".repeat(680);
        let samples = synthesize("en", &text, 450).unwrap();
        assert!(samples.len() <= MAX_SAMPLES);
        assert!(samples.len() > MAX_SAMPLES / 2, "{}", samples.len());
    }

    #[test]
    fn threads_take_turns() {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let language = if i % 2 == 0 { "en" } else { "es" };
                    synthesize(language, "Good morning.", 160).unwrap().len()
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap() > 5_000);
        }
    }
}
