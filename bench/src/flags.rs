//! The benchmarks' command lines: every flag takes one value (`--rounds 3`), so the loop
//! that pairs them up lives here once and each binary only says what a flag sets.

use anyhow::Context;

/// Calls `set` with each `--flag value` pair of the process's arguments, in order, stopping
/// at the first error `set` returns; a flag with no value after it is an error naming it.
pub fn each_flag(set: impl FnMut(&str, String) -> anyhow::Result<()>) -> anyhow::Result<()> {
    each_flag_of(std::env::args().skip(1), set)
}

fn each_flag_of(
    args: impl IntoIterator<Item = String>,
    mut set: impl FnMut(&str, String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        set(&flag, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::each_flag_of;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pairs_each_flag_with_the_value_after_it() {
        let mut seen = Vec::new();
        each_flag_of(args(&["--a", "1", "--b", "two"]), |f, v| {
            seen.push((f.to_owned(), v));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("--a".to_owned(), "1".to_owned()),
                ("--b".into(), "two".into())
            ]
        );
    }

    #[test]
    fn a_flag_with_no_value_is_an_error_naming_it() {
        let e = each_flag_of(args(&["--a", "1", "--rounds"]), |_, _| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "--rounds needs a value");
    }

    #[test]
    fn the_setters_error_stops_the_loop() {
        let mut calls = 0;
        let e = each_flag_of(args(&["--x", "1", "--y", "2"]), |f, _| {
            calls += 1;
            anyhow::bail!("unknown flag {f}")
        })
        .unwrap_err();
        assert_eq!((calls, e.to_string()), (1, "unknown flag --x".to_owned()));
    }
}
