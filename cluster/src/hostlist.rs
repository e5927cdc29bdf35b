//! Slurm hostlist expressions: `gpu[01-04,07],cpu3` → gpu01 gpu02 gpu03 gpu04 gpu07 cpu3.
//! Ranges keep their zero padding; several bracket groups in one name expand as a product.

#[derive(Debug, PartialEq, Eq)]
pub struct BadHostlist;

/// Split on commas that are not inside brackets.
fn top_level_items(s: &str) -> Result<Vec<&str>, BadHostlist> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(BadHostlist);
        }
    }
    if depth != 0 {
        return Err(BadHostlist);
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Expand one bracket body such as `01-04,07` into its members, keeping zero padding.
fn expand_range(body: &str) -> Result<Vec<String>, BadHostlist> {
    let mut out = Vec::new();
    for part in body.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u64, u64) = (lo.parse().map_err(|_| BadHostlist)?, hi.parse().map_err(|_| BadHostlist)?);
        if a > b || b - a > 100_000 {
            return Err(BadHostlist);
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

/// Expand a whole hostlist expression.
pub fn expand(list: &str) -> Result<Vec<String>, BadHostlist> {
    let mut hosts = Vec::new();
    for item in top_level_items(list.trim())? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while let Some(open) = rest.find('[') {
            let close = rest[open..].find(']').ok_or(BadHostlist)? + open;
            let prefix = &rest[..open];
            let members = expand_range(&rest[open + 1..close])?;
            names = names.iter().flat_map(|n| members.iter().map(move |m| format!("{n}{prefix}{m}"))).collect();
            rest = &rest[close + 1..];
        }
        if rest.contains(']') {
            return Err(BadHostlist);
        }
        hosts.extend(names.into_iter().map(|n| n + rest));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_ranges_lists_and_padding() {
        assert_eq!(expand("gpu[01-04,07],cpu3").unwrap(), ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]);
        assert_eq!(expand("node7").unwrap(), ["node7"]);
        assert_eq!(expand("a[8-10]").unwrap(), ["a8", "a9", "a10"]);
        assert_eq!(expand("r[1-2]n[01-02]").unwrap(), ["r1n01", "r1n02", "r2n01", "r2n02"]);
        assert_eq!(expand("x[1-2]-ib").unwrap(), ["x1-ib", "x2-ib"]);
    }

    #[test]
    fn refuses_malformed_lists() {
        for bad in ["gpu[01-", "gpu[03-01]", "gpu[a-b]", "gpu]1[", "g[[1]]"] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }
}
