//! Sound devices through `cpal`: listing them (`aparte devices`), finding the one a call uses
//! (the default or one named by the user), choosing its stream format, and the counters the
//! device callbacks keep.
//!
//! Everything device-specific stays behind this module, [`crate::capture`] and
//! [`crate::playback`]; the audio thread only sees an `AudioSource` and an `AudioSink`, so WAV,
//! tone and null calls never touch a sound card. On a machine without one, cpal still lists the
//! ALSA plugin devices (for example `null`), but the default device fails to open; the errors
//! here say so and suggest a file or tone instead.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use cpal::traits::{DeviceTrait, HostTrait};
use serde::Serialize;

/// Which way audio flows through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Capture (a microphone).
    Input,
    /// Playback (a speaker or headphones).
    Output,
}

impl Direction {
    fn noun(self) -> &'static str {
        match self {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Direction::Input => "--input-device",
            Direction::Output => "--output-device",
        }
    }

    /// What to use instead when no device works.
    fn alternatives(self) -> &'static str {
        match self {
            Direction::Input => "--input FILE.wav or --input tone",
            Direction::Output => "--output FILE.wav or --output null",
        }
    }
}

/// A device could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The audio system could not even list devices.
    #[error("cannot list audio devices ({cause}){cards}")]
    Host {
        /// What cpal reported.
        cause: String,
        /// A note on the sound cards, when there are none.
        cards: String,
    },
    /// The default device is missing or cannot be used.
    #[error("no usable default {}: {cause}{cards}. Run `aparte devices` to list devices and pick one with {}, or use {}", .direction.noun(), .direction.flag(), .direction.alternatives())]
    NoDefault {
        /// Capture or playback.
        direction: Direction,
        /// What cpal reported.
        cause: String,
        /// A note on the sound cards, when there are none.
        cards: String,
    },
    /// No device has the name the user gave.
    #[error("no {} named \"{name}\"; `aparte devices` lists them (use the name in the first column), or use {}", .direction.noun(), .direction.alternatives())]
    NotFound {
        /// Capture or playback.
        direction: Direction,
        /// The name asked for.
        name: String,
    },
    /// The device exists but could not be opened or started.
    #[error("cannot use {} \"{name}\": {cause}{cards}. Pick another with {} (see `aparte devices`), or use {}", .direction.noun(), .direction.flag(), .direction.alternatives())]
    Open {
        /// Capture or playback.
        direction: Direction,
        /// The device's name.
        name: String,
        /// What went wrong.
        cause: String,
        /// A note on the sound cards, when there are none.
        cards: String,
    },
}

/// Counters kept by the device callbacks and the audio thread, shared lock-free.
///
/// Overruns and underruns are counted in samples at the device rate (capture and playback
/// queues) so clock drift between the sound card and the 20 ms audio clock shows up as a slow
/// steady count, and a stall as a jump.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Captured samples dropped: the queue to the audio thread was full, or the backlog was
    /// trimmed to keep the delay low.
    pub capture_overrun_samples: AtomicU64,
    /// Frames sent padded with silence because the microphone had not delivered enough.
    pub capture_underrun_frames: AtomicU64,
    /// Silent samples played because the playback queue ran dry after playout began.
    pub playout_underrun_samples: AtomicU64,
    /// Decoded samples dropped because the playback queue was full (the device plays slower
    /// than our 20 ms clock).
    pub playout_overrun_samples: AtomicU64,
    /// Overruns and underruns the sound card driver itself reported.
    pub driver_xruns: AtomicU64,
    /// Other errors reported by a device stream.
    pub stream_errors: AtomicU64,
}

impl DeviceCounters {
    /// Adds `n` to a counter (relaxed: these are statistics, not synchronisation).
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> DeviceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeviceStats {
            capture_overrun_samples: get(&self.capture_overrun_samples),
            capture_underrun_frames: get(&self.capture_underrun_frames),
            playout_underrun_samples: get(&self.playout_underrun_samples),
            playout_overrun_samples: get(&self.playout_overrun_samples),
            driver_xruns: get(&self.driver_xruns),
            stream_errors: get(&self.stream_errors),
        }
    }
}

/// A snapshot of [`DeviceCounters`] (all zero when no sound device is used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// See [`DeviceCounters::capture_overrun_samples`].
    pub capture_overrun_samples: u64,
    /// See [`DeviceCounters::capture_underrun_frames`].
    pub capture_underrun_frames: u64,
    /// See [`DeviceCounters::playout_underrun_samples`].
    pub playout_underrun_samples: u64,
    /// See [`DeviceCounters::playout_overrun_samples`].
    pub playout_overrun_samples: u64,
    /// See [`DeviceCounters::driver_xruns`].
    pub driver_xruns: u64,
    /// See [`DeviceCounters::stream_errors`].
    pub stream_errors: u64,
}

/// A device's default stream format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Samples per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Sample format, as cpal names it (`f32`, `i16`, …).
    pub format: String,
}

/// One device as `aparte devices` shows it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The name to pass to `--input-device` / `--output-device` (the ALSA PCM name on Linux).
    pub id: String,
    /// A human-readable description.
    pub description: String,
    /// Whether this is the system's default device for this direction.
    pub is_default: bool,
    /// The default format, or why the device cannot be opened right now.
    pub config: Result<DeviceConfig, String>,
}

/// What `aparte devices` prints.
#[derive(Debug, Clone)]
pub struct DeviceList {
    /// The audio system in use (ALSA on Linux).
    pub host: String,
    /// Capture devices.
    pub inputs: Vec<DeviceInfo>,
    /// Playback devices.
    pub outputs: Vec<DeviceInfo>,
    /// Why the default input device cannot be used, if it cannot.
    pub default_input_problem: Option<String>,
    /// Why the default output device cannot be used, if it cannot.
    pub default_output_problem: Option<String>,
    /// Why there is no sound card, when the system says there is none.
    pub no_cards: Option<&'static str>,
}

impl std::fmt::Display for DeviceList {
    /// The `aparte devices` listing: one line per device, `*` on the default.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (title, devices, flag, problem) in [
            (
                "Input devices (microphones)",
                &self.inputs,
                "--input mic --input-device",
                &self.default_input_problem,
            ),
            (
                "Output devices (speakers)",
                &self.outputs,
                "--output speaker --output-device",
                &self.default_output_problem,
            ),
        ] {
            writeln!(
                f,
                "{title}, via {}; use the name with {flag} NAME:",
                self.host
            )?;
            if devices.is_empty() {
                writeln!(f, "  none")?;
            }
            for d in devices {
                let marker = if d.is_default { "*" } else { " " };
                let config = match &d.config {
                    Ok(c) => format!("{} Hz, {} ch, {}", c.sample_rate, c.channels, c.format),
                    Err(e) => format!("unavailable: {e}"),
                };
                writeln!(f, "{marker} {:<24} {:<40} {config}", d.id, d.description)?;
            }
            if let Some(problem) = problem {
                writeln!(f, "  no usable default device: {problem}")?;
            }
        }
        let all = || self.inputs.iter().chain(&self.outputs);
        if all().any(|d| d.is_default) {
            writeln!(f, "(* = default)")?;
        }
        if let Some(why) = self.no_cards {
            writeln!(f, "No sound card: {why}.")?;
        }
        if !all().any(|d| d.config.is_ok()) || self.no_cards.is_some() {
            let null = if all().any(|d| d.id == "null" && d.config.is_ok()) {
                " (or --input mic --input-device null / --output speaker --output-device null: silence in, playback discarded)"
            } else {
                ""
            };
            writeln!(
                f,
                "Calls still work with --input FILE.wav|tone|silence and --output FILE.wav|null{null}."
            )?;
        }
        Ok(())
    }
}

/// Lists capture and playback devices with their default formats.
pub fn list() -> Result<DeviceList, DeviceError> {
    quiet_alsa();
    let host = cpal::default_host();
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| DeviceError::Host {
            cause: e.to_string(),
            cards: cards_note(),
        })?
        .collect();
    let default_in = host.default_input_device().and_then(|d| device_id(&d));
    let default_out = host.default_output_device().and_then(|d| device_id(&d));
    let info = |d: &cpal::Device, direction: Direction, default: &Option<String>| {
        let id = device_id(d).unwrap_or_default();
        let config = match direction {
            Direction::Input => d.default_input_config(),
            Direction::Output => d.default_output_config(),
        };
        DeviceInfo {
            is_default: default.as_deref() == Some(id.as_str()),
            description: description(d),
            id,
            config: config
                .map(|c| DeviceConfig {
                    sample_rate: c.sample_rate(),
                    channels: c.channels(),
                    format: c.sample_format().to_string(),
                })
                .map_err(|e| e.to_string()),
        }
    };
    Ok(DeviceList {
        host: host.id().name().to_string(),
        inputs: devices
            .iter()
            .filter(|d| d.supports_input())
            .map(|d| info(d, Direction::Input, &default_in))
            .collect(),
        outputs: devices
            .iter()
            .filter(|d| d.supports_output())
            .map(|d| info(d, Direction::Output, &default_out))
            .collect(),
        default_input_problem: default_problem(&host, Direction::Input),
        default_output_problem: default_problem(&host, Direction::Output),
        no_cards: no_cards(),
    })
}

fn default_problem(host: &cpal::Host, direction: Direction) -> Option<String> {
    let device = match direction {
        Direction::Input => host.default_input_device(),
        Direction::Output => host.default_output_device(),
    };
    let Some(device) = device else {
        return Some("the audio system has none".into());
    };
    let config = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    };
    let name = device_id(&device).unwrap_or_default();
    config
        .err()
        .map(|e| format!("\"{name}\" cannot be opened: {e}"))
}

/// The device a call should use and the stream format to open it with.
pub(crate) struct Chosen {
    pub(crate) device: cpal::Device,
    pub(crate) name: String,
    pub(crate) config: cpal::StreamConfig,
    pub(crate) format: cpal::SampleFormat,
    /// The same config with the device's default buffer size: some drivers refuse the fixed
    /// size we ask for, and then we retry with this.
    pub(crate) fallback: cpal::StreamConfig,
}

/// Finds the default device (`name` = None) or the named one, and its default format with a
/// ~10 ms callback period when the device lets us choose (a short period keeps the capture and
/// playback queues, and so the delay, small).
pub(crate) fn choose(direction: Direction, name: Option<&str>) -> Result<Chosen, DeviceError> {
    quiet_alsa();
    let host = cpal::default_host();
    let device = match name {
        None => match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or_else(|| DeviceError::NoDefault {
            direction,
            cause: "the audio system has no default device".into(),
            cards: cards_note(),
        })?,
        Some(wanted) => find(&host, direction, wanted)?,
    };
    let label = device_id(&device).unwrap_or_else(|| description(&device));
    let supported = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .map_err(|e| match name {
        None => DeviceError::NoDefault {
            direction,
            cause: format!("\"{label}\" cannot be opened ({e})"),
            cards: cards_note(),
        },
        Some(_) => DeviceError::Open {
            direction,
            name: label.clone(),
            cause: e.to_string(),
            cards: cards_note(),
        },
    })?;
    let fallback = supported.config();
    let mut config = fallback;
    if let cpal::SupportedBufferSize::Range { min, max } = supported.buffer_size() {
        let ten_ms = (config.sample_rate / 100).clamp(*min, *max);
        config.buffer_size = cpal::BufferSize::Fixed(ten_ms);
    }
    Ok(Chosen {
        device,
        name: label,
        config,
        format: supported.sample_format(),
        fallback,
    })
}

fn find(
    host: &cpal::Host,
    direction: Direction,
    wanted: &str,
) -> Result<cpal::Device, DeviceError> {
    let not_found = || DeviceError::NotFound {
        direction,
        name: wanted.to_owned(),
    };
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| DeviceError::Host {
            cause: e.to_string(),
            cards: cards_note(),
        })?
        .filter(|d| match direction {
            Direction::Input => d.supports_input(),
            Direction::Output => d.supports_output(),
        })
        .collect();
    // The id (ALSA PCM name) is unique; the description only when no id matches.
    if let Some(d) = devices
        .iter()
        .find(|d| device_id(d).as_deref() == Some(wanted))
    {
        return Ok(d.clone());
    }
    if let Some(d) = devices.iter().find(|d| description(d) == wanted) {
        return Ok(d.clone());
    }
    // Backend shorthands (ALSA `hw:0,0`) that the host canonicalises.
    let id = cpal::DeviceId::new(host.id(), wanted);
    host.device_by_id(&id).ok_or_else(not_found)
}

fn device_id(d: &cpal::Device) -> Option<String> {
    d.id().ok().map(|id| id.id().to_owned())
}

fn description(d: &cpal::Device) -> String {
    d.description()
        .map(|desc| desc.name().to_owned())
        .unwrap_or_default()
}

/// alsa-lib writes its own diagnostics to stderr ("ALSA lib confmisc.c:855:(parse_card) cannot
/// find card '0'", eight lines per probe on a machine without a sound card). Our errors already
/// say what failed, so send them to a buffer for this thread instead (alsa's safe hook).
fn quiet_alsa() {
    #[cfg(target_os = "linux")]
    {
        // Failing to install the hook only leaves the chatter on stderr.
        let _ = alsa::Output::local_error_handler();
    }
}

/// A note to append to device errors when the machine has no sound card at all, so the error
/// names the real problem instead of only an ALSA error code.
pub(crate) fn cards_note() -> String {
    no_cards()
        .map(|why| format!(" ({why})"))
        .unwrap_or_default()
}

/// Why the machine has no sound card, when the kernel says so (Linux: `/proc/asound`).
fn no_cards() -> Option<&'static str> {
    #[cfg(target_os = "linux")]
    {
        let has_card = |text: &str| {
            text.lines()
                .any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        };
        match std::fs::read_to_string("/proc/asound/cards") {
            Err(_) => Some("ALSA has no sound card (/proc/asound does not exist on this machine)"),
            Ok(text) if !has_card(&text) => {
                Some("ALSA has no sound card (/proc/asound/cards lists none)")
            }
            Ok(_) => None,
        }
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_name_the_problem_and_the_alternatives() {
        let e = DeviceError::NoDefault {
            direction: Direction::Input,
            cause: "\"default\" cannot be opened (no such device)".into(),
            cards: " (ALSA has no sound card)".into(),
        }
        .to_string();
        assert!(e.contains("no usable default microphone"), "{e}");
        assert!(e.contains("ALSA has no sound card"), "{e}");
        assert!(e.contains("--input FILE.wav or --input tone"), "{e}");
        let e = DeviceError::NotFound {
            direction: Direction::Output,
            name: "nope".into(),
        }
        .to_string();
        assert!(e.contains("no speaker named \"nope\""), "{e}");
        assert!(e.contains("--output FILE.wav or --output null"), "{e}");
    }

    fn device(id: &str, is_default: bool, ok: bool) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            description: format!("{id} device"),
            is_default,
            config: if ok {
                Ok(DeviceConfig {
                    sample_rate: 48_000,
                    channels: 2,
                    format: "f32".into(),
                })
            } else {
                Err("busy".into())
            },
        }
    }

    #[test]
    fn listing_marks_the_default_and_explains_an_empty_machine() {
        let list = DeviceList {
            host: "ALSA".into(),
            inputs: vec![
                device("default", true, true),
                device("hw:1,0", false, false),
            ],
            outputs: vec![device("default", true, true)],
            default_input_problem: None,
            default_output_problem: None,
            no_cards: None,
        };
        let text = list.to_string();
        assert!(text.contains("* default "), "{text}");
        assert!(text.contains("48000 Hz, 2 ch, f32"), "{text}");
        assert!(text.contains("  hw:1,0 "), "{text}");
        assert!(text.contains("unavailable: busy"), "{text}");
        assert!(text.contains("(* = default)"), "{text}");
        assert!(!text.contains("No sound card"), "{text}");

        let empty = DeviceList {
            host: "ALSA".into(),
            inputs: vec![],
            outputs: vec![device("null", false, true)],
            default_input_problem: Some("\"default\" cannot be opened: gone".into()),
            default_output_problem: None,
            no_cards: Some("ALSA has no sound card"),
        };
        let text = empty.to_string();
        assert!(text.contains("(microphones), via ALSA; use the name with --input mic --input-device NAME:\n  none\n  no usable default device: \"default\" cannot be opened: gone"), "{text}");
        assert!(
            text.contains("No sound card: ALSA has no sound card."),
            "{text}"
        );
        assert!(text.contains("--input FILE.wav|tone|silence"), "{text}");
        assert!(text.contains("--output-device null"), "{text}");
        assert!(!text.contains("(* = default)"), "{text}");
    }

    #[test]
    fn counters_snapshot() {
        let c = DeviceCounters::default();
        DeviceCounters::add(&c.capture_overrun_samples, 480);
        DeviceCounters::add(&c.capture_overrun_samples, 20);
        DeviceCounters::add(&c.driver_xruns, 1);
        let s = c.snapshot();
        assert_eq!(s.capture_overrun_samples, 500);
        assert_eq!(s.driver_xruns, 1);
        assert_eq!(s.playout_underrun_samples, 0);
    }
}
