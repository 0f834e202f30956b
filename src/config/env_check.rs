//! `RINGCAST_*` environment variables that name no configuration key: a typo
//! (`RINGCAST_LISTNE`) would otherwise be ignored without a word. The server warns about
//! each at start-up, with the nearest known variable when one is close.

use super::{CONFIG_FILE_ENV, KEYS, env_name};

/// Variables with the prefix that are not configuration keys but are known: read by the
/// project's scripts (`scripts/test`), not by the server.
const OTHER_KNOWN: [&str; 2] = ["RINGCAST_NO_CLIENTS", "RINGCAST_NO_FUZZ"];

/// The `RINGCAST_*` names among `names` that the server does not know, each with the
/// nearest variable it does know when that is close (at most 3 edits).
pub fn unknown_env<I, S>(names: I) -> Vec<(String, Option<String>)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let known: Vec<String> = KEYS
        .iter()
        .map(|k| env_name(k))
        .chain([CONFIG_FILE_ENV.to_owned()])
        .collect();
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref();
        if !name.starts_with("RINGCAST_")
            || known.iter().any(|k| k == name)
            || OTHER_KNOWN.contains(&name)
        {
            continue;
        }
        let nearest = known
            .iter()
            .map(|k| (edit_distance(name, k), k))
            .min_by_key(|(d, _)| *d)
            .filter(|(d, _)| *d <= 3)
            .map(|(_, k)| k.clone());
        out.push((name.to_owned(), nearest));
    }
    out
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_reported_with_the_nearest_key() {
        let found = unknown_env([
            "RINGCAST_LISTNE",
            "RINGCAST_LISTEN",
            "RINGCAST_CONFIG",
            "RINGCAST_NO_FUZZ",
            "RINGCAST_SOMETHING_ELSE_ENTIRELY",
            "PATH",
        ]);
        assert_eq!(
            found,
            vec![
                (
                    "RINGCAST_LISTNE".to_owned(),
                    Some("RINGCAST_LISTEN".to_owned())
                ),
                ("RINGCAST_SOMETHING_ELSE_ENTIRELY".to_owned(), None),
            ]
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
