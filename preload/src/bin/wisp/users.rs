//! The registrar's `--users FILE`: who may register, and with what password.
//!
//! One `user@domain:password` per line; `#` starts a comment line and blank
//! lines are skipped. The password is everything after the first `:` that
//! follows the `@`, so it may itself contain `:` (a user part never does in
//! practice, and `user@domain` is what digest authentication names).

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub user: String,
    pub domain: String,
    pub password: String,
}

/// Read and parse a users file; errors name the file and the line.
pub fn load(path: &Path) -> Result<Vec<User>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// Parse a users file's text. `Err((line number, why))` on the first bad line.
pub fn parse(text: &str) -> Result<Vec<User>, (usize, String)> {
    let mut users: Vec<User> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| (n, format!("{why}; expected user@domain:password"));
        let (user, rest) = line.split_once('@').ok_or_else(|| bad("no '@'"))?;
        let (domain, password) = rest.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let (user, domain) = (user.trim(), domain.trim().to_ascii_lowercase());
        if user.is_empty() || user.contains(char::is_whitespace) {
            return Err(bad("empty or blank-containing user"));
        }
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad("bad domain"));
        }
        if password.is_empty() {
            return Err(bad("empty password"));
        }
        if users.iter().any(|u| u.user == user && u.domain == domain) {
            return Err((n, format!("{user}@{domain} is listed twice")));
        }
        users.push(User {
            user: user.to_string(),
            domain,
            password: password.to_string(),
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_colons_in_passwords() {
        let text = "# staff\n\nalice@Example.com:s3cret\n  bob@example.com:a:b  \n";
        let users = parse(text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].domain, "example.com");
        assert_eq!(users[1].password, "a:b");
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        assert_eq!(parse("a@b:c\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(parse("a@b:\n").unwrap_err().0, 1);
        assert_eq!(parse("@b:c\n").unwrap_err().0, 1);
        assert_eq!(parse("a@b c:d\n").unwrap_err().0, 1);
        assert_eq!(parse("a@b:c\n#\na@B:d\n").unwrap_err().0, 3);
    }
}
