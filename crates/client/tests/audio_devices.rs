//! The audio pipeline on real sound-device code paths, without a sound card: ALSA's `null`
//! device (defined by alsa-lib's stock configuration) captures silence and discards playback,
//! so cpal's ALSA backend, our callbacks, rings, resampling and counters all run.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use aparte_client::audio::{AudioPipeline, Input, Output};

#[tokio::test]
async fn null_microphone_and_speaker_carry_frames_through_the_pipeline() {
    let mut audio = AudioPipeline::start(
        &Input::Mic(Some("null".into())),
        &Output::Speaker(Some("null".into())),
    )
    .expect("ALSA's null device opens (alsa-lib's stock configuration defines it)");
    audio.sending.store(true, Ordering::SeqCst);
    // Every packet the audio thread encodes marks one of its 20 ms ticks; loop each back in as
    // if the peer had sent it, so the jitter buffer, decoder and speaker run too.
    for index in 0..60u64 {
        let packet = tokio::time::timeout(Duration::from_secs(5), audio.outgoing.recv())
            .await
            .expect("the audio thread keeps encoding microphone frames")
            .expect("the pipeline is running");
        audio
            .incoming
            .try_send((index, audio.now_ms(), packet))
            .expect("the incoming queue has room");
    }
    let stats = audio.stop().expect("the pipeline stops cleanly");
    assert!(stats.frames_encoded >= 60, "{stats:?}");
    assert_eq!(stats.frames_dropped_send, 0, "{stats:?}");
    // The jitter buffer starts after its initial delay; well within 60 ticks.
    assert!(stats.frames_played >= 30, "{stats:?}");
    assert_eq!(stats.decode_errors, 0, "{stats:?}");
    // The null device captures digital silence.
    assert!(stats.input_dbfs < -90.0, "{stats:?}");
    assert_eq!(stats.devices.stream_errors, 0, "{stats:?}");
}

#[test]
fn unknown_devices_are_clear_errors() {
    let err = AudioPipeline::start(&Input::Mic(Some("no-such-mic".into())), &Output::Null)
        .err()
        .expect("no such device")
        .to_string();
    assert!(err.contains("no microphone named \"no-such-mic\""), "{err}");
    let err = AudioPipeline::start(&Input::Silence, &Output::Speaker(Some("no-such".into())))
        .err()
        .expect("no such device")
        .to_string();
    assert!(err.contains("no speaker named \"no-such\""), "{err}");
}
