//! Every Apertium pair with English that Debian ships, through our long-lived pipeline
//! (`apertium.rs`): each direction's raw output equals one-shot `apertium -u MODE`, and
//! sentences keep their content words. Pairs that go both ways are tested English → X →
//! English; pairs that only go into English are tested from sentences in that language.
//!
//! The pairs are installed by `bash scripts/install-models --pairs all` (which `scripts/test`
//! runs); a missing pair fails its test with that command, it is never skipped.
//!
//! A round trip measures the plumbing and a lower bound on damage, not translation quality:
//! a word Apertium leaves untranslated comes back unchanged. So each forward translation must
//! also be mostly words that are not in the English sentence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/oneshot.rs"]
mod oneshot;

use std::collections::HashSet;
use std::path::Path;

use aparte_translate::apertium::{tidy, ApertiumTranslator, DEFAULT_MODES_DIR};
use aparte_translate::wer::{normalize_words, word_error_rate};
use aparte_translate::{Language, TextTranslator};

use oneshot::oneshot_apertium;

/// English sentences for the round trips, each with the content words that must come back.
const ENGLISH: [(&str, &[&str]); 6] = [
    (
        "My sister bought a new car last week.",
        &["sister", "bought", "new", "week"],
    ),
    (
        "The children are playing in the garden.",
        &["children", "garden"],
    ),
    (
        "Thank you for your help with the project.",
        &["thank", "help"],
    ),
    (
        "We will meet at the train station after lunch.",
        &["station", "after", "lunch"],
    ),
    (
        "Please call me tomorrow morning at the office.",
        &["tomorrow", "morning", "office"],
    ),
    ("Go somewhere and do something.", &["somewhere"]),
];

fn start(from: Language, to: Language) -> ApertiumTranslator {
    ApertiumTranslator::start(from, to, Path::new(DEFAULT_MODES_DIR)).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need every pair: bash scripts/install-models --pairs all)")
    })
}

/// Translates with our pipeline and checks the raw answer against one-shot Apertium with the
/// same mode file, and the tidied one against tidying that. Returns the tidied translation.
fn translate_checked(mt: &mut ApertiumTranslator, text: &str) -> String {
    let mode = mt
        .mode_file()
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap()
        .to_string();
    let raw = mt.translate_raw(text).unwrap();
    let reference = oneshot_apertium(&mode, text);
    assert_eq!(
        raw, reference,
        "{mode}: pipeline and one-shot differ for '{text}'"
    );
    let tidied = mt.translate(text).unwrap();
    assert_eq!(tidied, tidy(text, &reference), "{mode}: for '{text}'");
    tidied
}

/// How many of `words` are in `text` (a word counts when a word of the text starts with it,
/// so "play" finds "playing").
fn found(words: &[&str], text: &str) -> usize {
    let got = normalize_words(text);
    words
        .iter()
        .filter(|w| got.iter().any(|g| g.starts_with(*w)))
        .count()
}

/// English → `other` → English with every sentence; prints and bounds the figures.
fn round_trip(other: Language) {
    let mut forward = start(Language::English, other);
    let mut back = start(other, Language::English);
    let (mut kept, mut wanted) = (0, 0);
    let (mut new_words, mut out_words) = (0, 0);
    let mut errors = 0.0;
    let mut words = 0;
    for (english, content) in ENGLISH {
        let there = translate_checked(&mut forward, english);
        let again = translate_checked(&mut back, &there);
        let source: HashSet<String> = normalize_words(english).into_iter().collect();
        let translated = normalize_words(&there);
        new_words += translated.iter().filter(|w| !source.contains(*w)).count();
        out_words += translated.len();
        kept += found(content, &again);
        wanted += content.len();
        let n = normalize_words(english).len();
        errors += word_error_rate(english, &again) * n as f64;
        words += n;
        println!("{english} → {there} → {again}");
    }
    let translated_share = new_words as f64 / out_words as f64;
    let kept_share = kept as f64 / wanted as f64;
    let wer = errors / words as f64;
    println!(
        "en→{0}→en ({1} and back): content words kept {kept}/{wanted} ({2:.0} %), round-trip \
         WER {3:.1} % over {words} words; {4:.0} % of the {0} words are not English ones",
        other.code(),
        forward.mode_file().display(),
        kept_share * 100.0,
        wer * 100.0,
        translated_share * 100.0,
    );
    // A pipeline that echoed its input, lost its sentences or mixed answers up fails these.
    assert!(translated_share >= 0.5, "en→{other}: mostly untranslated");
    assert!(
        kept_share >= 0.6,
        "en→{other}→en kept {kept}/{wanted} content words"
    );
}

/// Sentences in `from` → English; each must bring its content words.
fn into_english(from: Language, cases: &[(&str, &[&str])]) {
    let mut mt = start(from, Language::English);
    let (mut kept, mut wanted) = (0, 0);
    for (text, content) in cases {
        let english = translate_checked(&mut mt, text);
        println!("{text} → {english}");
        kept += found(content, &english);
        wanted += content.len();
    }
    println!(
        "{}→en ({}): content words {kept}/{wanted}",
        from.code(),
        mt.mode_file().display()
    );
    assert!(
        kept * 4 >= wanted * 3,
        "{from}→en kept {kept}/{wanted} content words"
    );
}

#[test]
fn spanish_round_trip() {
    round_trip(Language::Spanish);
}

#[test]
fn catalan_round_trip() {
    round_trip(Language::Catalan);
}

#[test]
fn galician_round_trip() {
    round_trip(Language::Galician);
}

#[test]
fn esperanto_round_trip() {
    round_trip(Language::Esperanto);
}

#[test]
fn serbo_croatian_round_trips() {
    for language in [Language::Serbian, Language::Croatian, Language::Bosnian] {
        round_trip(language);
    }
}

#[test]
fn serbian_in_cyrillic_is_read_as_latin() {
    let mut mt = start(Language::Serbian, Language::English);
    let cyrillic = mt.translate("Моја кућа је веома велика.").unwrap();
    assert_eq!(
        cyrillic,
        mt.translate("Moja kuća je veoma velika.").unwrap()
    );
    assert_eq!(found(&["my", "large"], &cyrillic), 2, "{cyrillic}");
    into_english(
        Language::Croatian,
        &[
            ("Moja kuća je vrlo velika.", &["my", "large"]),
            ("Djeca se igraju u vrtu.", &["children", "play", "garden"]),
        ],
    );
}

#[test]
fn basque_into_english() {
    into_english(
        Language::Basque,
        &[
            ("Nire etxea oso handia da.", &["house", "huge"]),
            (
                "Gaur goizean ogia erosi dut.",
                &["morning", "bread", "bought"],
            ),
            ("Liburu bat irakurtzen ari naiz.", &["book", "reading"]),
            ("Bihar hondartzara joango gara.", &["tomorrow", "beach"]),
        ],
    );
}

#[test]
fn icelandic_into_english() {
    into_english(
        Language::Icelandic,
        &[
            ("Húsið mitt er mjög stórt.", &["house", "big"]),
            (
                "Ég keypti nýjan bíl í gær.",
                &["bought", "car", "yesterday"],
            ),
            (
                "Börnin leika sér í garðinum.",
                &["children", "play", "garden"],
            ),
            ("Við förum á ströndina á morgun.", &["beach", "tomorrow"]),
        ],
    );
}

#[test]
fn macedonian_into_english() {
    into_english(
        Language::Macedonian,
        &[
            ("Мојата куќа е многу голема.", &["house", "huge"]),
            ("Децата играат во градината.", &["children", "playing"]),
            (
                "Утре одиме на плажа со моите пријатели.",
                &["tomorrow", "friends"],
            ),
            ("Сестра ми купи нов автомобил.", &["new", "automobile"]),
        ],
    );
}

#[test]
fn pairs_debian_ships_only_into_english_have_no_reverse_mode() {
    // If Debian ever adds the reverse modes, `aparte languages` routes them and this test
    // says the docs need updating.
    for language in [Language::Basque, Language::Icelandic, Language::Macedonian] {
        assert!(
            ApertiumTranslator::start(Language::English, language, Path::new(DEFAULT_MODES_DIR))
                .is_err(),
            "en→{language} exists now: update docs/TRANSLATION.md"
        );
    }
}
