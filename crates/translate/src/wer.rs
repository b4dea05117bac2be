//! Word error rate and repetition checks, for tests and benchmarks of the recognizer.

/// Number words that Whisper writes as digits ("ten of clubs" → "10 of clubs"), and spellings
/// it writes either way. [`normalize_words`] maps them, as Whisper's own English text
/// normalizer does, so a test script can be written the way people speak.
const SPELLINGS: [(&str, &str); 30] = [
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("ok", "okay"),
];

/// Lowercase words with punctuation removed (apostrophes inside words are kept, hyphens split
/// words: "3-4" is "3 4"), number words up to twenty and the tens as digits, and "ok" as
/// "okay".
pub fn normalize_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            let w = w
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .trim_matches('\'')
                .to_lowercase();
            SPELLINGS
                .iter()
                .find(|(word, _)| *word == w)
                .map_or(w, |(_, canonical)| (*canonical).to_string())
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// How many copies of `phrase` follow one another, at most, in `words`.
fn longest_run(words: &[String], phrase: &[String]) -> usize {
    let p = phrase.len();
    let mut best = 0;
    for start in 0..words.len() {
        let mut copies = 0;
        while words
            .get(start + copies * p..start + (copies + 1) * p)
            .is_some_and(|w| w == phrase)
        {
            copies += 1;
        }
        best = best.max(copies);
    }
    best
}

/// A word or phrase that `hypothesis` says several times in a row, more times in a row than
/// `reference` says any phrase of as many words: the mark of a decoder stuck in a loop ("5 5
/// 5" for "five five", "10 of clubs 10 of clubs" for "ten of clubs"). A misheard genuine
/// repeat ("time time" for "five five") is not one. Words are compared after
/// [`normalize_words`], so case and punctuation do not hide a loop. Returns the repeated
/// phrase and its copy count.
pub fn extra_repetition(reference: &str, hypothesis: &str) -> Option<(String, usize)> {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    for period in 1..=h.len() / 2 {
        let allowed = (0..r.len().saturating_sub(period - 1))
            .map(|start| longest_run(&r[start..], &r[start..start + period]))
            .max()
            .unwrap_or(0)
            .max(1);
        for start in 0..=h.len() - 2 * period {
            let phrase = &h[start..start + period];
            let copies = longest_run(&h[start..], phrase);
            if copies > allowed {
                return Some((phrase.join(" "), copies));
            }
        }
    }
    None
}

/// (substitutions + deletions + insertions) / reference words, after [`normalize_words`].
/// An empty reference gives 0 for an empty hypothesis and 1 otherwise.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // Levenshtein distance over words, one row at a time.
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut current = Vec::with_capacity(h.len() + 1);
        current.push(i + 1);
        for (j, hw) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rw != hw);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_of_error() {
        assert_eq!(word_error_rate("the cat sat", "The cat, sat!"), 0.0);
        assert_eq!(word_error_rate("the cat sat", "the dog sat"), 1.0 / 3.0);
        assert_eq!(word_error_rate("the cat sat", "the sat"), 1.0 / 3.0);
        assert_eq!(word_error_rate("the cat sat", "the fat cat sat"), 1.0 / 3.0);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "noise"), 1.0);
        assert_eq!(word_error_rate("a b", ""), 1.0);
        assert_eq!(
            normalize_words("It's 'quoted' -- ok"),
            ["it's", "quoted", "okay"]
        );
        assert_eq!(word_error_rate("ten of clubs", "10 of Clubs."), 0.0);
        assert_eq!(word_error_rate("Five.", "5"), 0.0);
        assert_eq!(word_error_rate("three four", "3-4"), 0.0);
    }

    #[test]
    fn repetition_the_script_did_not_have_is_found() {
        assert_eq!(
            extra_repetition("five five", "5 5 5"),
            Some(("5".into(), 3))
        );
        assert_eq!(extra_repetition("five five", "Five, five."), None);
        // A genuine repeat misheard is not a loop; said once more, it is.
        assert_eq!(extra_repetition("five five", "Time, time."), None);
        assert_eq!(
            extra_repetition("five five", "time time time"),
            Some(("time".into(), 3))
        );
        assert_eq!(
            extra_repetition("ten of clubs", "10 of clubs. 10 of Clubs"),
            Some(("10 of clubs".into(), 2))
        );
        assert_eq!(extra_repetition("no no no", "No, no, no."), None);
        assert_eq!(extra_repetition("see you", "See you."), None);
        assert_eq!(extra_repetition("", ""), None);
        assert_eq!(
            extra_repetition("yes", "Yes. Yes."),
            Some(("yes".into(), 2))
        );
    }
}
