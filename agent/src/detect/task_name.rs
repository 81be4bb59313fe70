//! Names for periodic tasks that a person can read: the words of a command line that tell a
//! group of tasks apart, not the interpreter they all share.
//!
//! `/usr/bin/python3 -u /srv/jobs/task.py refresh_contexts --since 1h` is, beside
//! `… task.py send_invoices --since 1h`, the task `task.py refresh_contexts`: the interpreter,
//! its flags and wrappers (`env`, `nice`, `sh -c "cd … && …"`, `uv run`) say nothing about
//! which job it is, the script's directory neither, and words every task of the group shares
//! (`--since 1h`) add nothing. The whole command line stays in the finding beside the name.
//!
//! Pure functions over the command line as the process table has it (argv joined by spaces):
//! a `sh -c` script is one argv word holding a whole shell command, which splitting on
//! whitespace turns back into words — the shape the rules below expect.

/// Longest name produced (bytes, before the ellipsis).
const MAX_NAME: usize = 64;
/// Longest single argument kept in a name (a JSON blob or a long path is cut).
const MAX_WORD: usize = 32;
/// Differing argument words kept per name.
const MAX_ARGS: usize = 4;
/// Leading positional words (a subcommand) named for a task whose script no other task of
/// the group runs.
const LONE_SUBCOMMAND_WORDS: usize = 2;
/// Longest fallback name (the command line itself) when shortening cannot tell tasks apart.
const MAX_FALLBACK: usize = 120;

/// What a command line runs once interpreters and wrappers are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program<'a> {
    /// The script's file name (`task.py`), a module (`app.jobs`), or the program's own name.
    pub script: String,
    /// The words after it, shell redirections removed.
    pub args: Vec<&'a str>,
}

fn basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .unwrap_or(path)
}

fn unquote(word: &str) -> &str {
    word.trim_matches(|c| c == '"' || c == '\'')
}

fn is_python(name: &str) -> bool {
    name.starts_with("python") || name.starts_with("pypy")
}

/// Interpreters whose first non-option word is the script, and their options that take a
/// value as the next word.
fn interpreter_value_flags(name: &str) -> Option<&'static [&'static str]> {
    if is_python(name) {
        return Some(&["-W", "-X", "-Q"]);
    }
    match name {
        "node" | "nodejs" | "bun" => Some(&["-r", "--require", "--import", "--loader"]),
        "ruby" => Some(&["-I", "-r", "-C", "-E"]),
        "perl" => Some(&["-I", "-M", "-m"]),
        "php" | "php-cli" => Some(&["-c", "-d", "-z"]),
        "Rscript" => Some(&[]),
        _ => None,
    }
}

/// Wrappers that run the rest of the line as a command, and their options taking a value.
fn wrapper_value_flags(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "env" => Some(&["-u", "--unset", "-C", "--chdir", "-S"]),
        "nice" => Some(&["-n", "--adjustment"]),
        "ionice" => Some(&["-c", "-n", "--class", "--classdata", "-p"]),
        "sudo" => Some(&["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U"]),
        "runuser" | "su" => Some(&["-u", "-g", "-G", "--user", "--group"]),
        "stdbuf" => Some(&["-i", "-o", "-e"]),
        "chrt" | "taskset" | "setsid" | "nohup" | "exec" | "time" | "chronic" | "command"
        | "cronic" | "catchsegv" => Some(&[]),
        _ => None,
    }
}

fn is_shell(name: &str) -> bool {
    matches!(name, "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash")
}

/// Shell words that only prepare for the real command (`cd /srv && …`).
fn is_setup_command(word: &str) -> bool {
    matches!(
        word,
        "cd" | "export" | "source" | "." | "set" | "umask" | "ulimit" | "true" | ":" | "sleep"
    )
}

/// `A=b` before a command: an environment assignment, not the command.
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Skips options (and the values of those in `value_flags`) from `i`; returns the index of
/// the first word that is not an option.
fn skip_options(words: &[&str], mut i: usize, value_flags: &[&str]) -> usize {
    while let Some(w) = words.get(i) {
        if *w == "--" {
            return i + 1;
        }
        if !w.starts_with('-') || *w == "-" {
            return i;
        }
        i += if value_flags.contains(w) { 2 } else { 1 };
    }
    i
}

/// Removes shell redirections (`>> /var/log/x`, `2>&1`, `</dev/null`).
fn without_redirections<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(words.len());
    let mut skip_next = false;
    for w in words {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let op = w.trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
        if op.starts_with('>') || op.starts_with('<') {
            // A bare operator takes the next word as its file.
            skip_next = op.trim_start_matches(['>', '<', '&', '|']).is_empty()
                && !op.ends_with("&1")
                && !op.ends_with("&2");
            continue;
        }
        out.push(*w);
    }
    out
}

/// The first command of a `sh -c` script that is not setup (`cd`, `export`, `. venv/…`).
fn shell_command<'s, 'a>(script: &'s [&'a str]) -> &'s [&'a str] {
    let mut start = 0;
    let mut segments = Vec::new();
    for (i, w) in script.iter().enumerate() {
        let separator = matches!(*w, "&&" | "||" | ";" | "|" | "&");
        if separator || w.ends_with(';') {
            let end = if separator { i } else { i + 1 };
            segments.push((start, end));
            start = i + 1;
        }
    }
    segments.push((start, script.len()));
    for (s, e) in segments {
        let segment = &script[s..e];
        if let Some(first) = segment.first()
            && !is_setup_command(first.trim_end_matches(';'))
        {
            return segment;
        }
    }
    &[]
}

/// What `cmdline` runs, with the interpreter and wrappers removed. None for an empty line.
pub fn program(cmdline: &str) -> Option<Program<'_>> {
    let words: Vec<&str> = cmdline
        .split_whitespace()
        .map(unquote)
        .filter(|w| !w.is_empty())
        .collect();
    program_of(&words, 0)
}

fn program_of<'a>(words: &[&'a str], depth: usize) -> Option<Program<'a>> {
    let mut i = 0;
    // Bounded: each step consumes a word; nested `sh -c` recurses at most a few times.
    while let Some(&w) = words.get(i) {
        let name = basename(w);
        if is_assignment(w) {
            i += 1;
        } else if let Some(flags) = wrapper_value_flags(name) {
            i = skip_options(words, i + 1, flags);
            // `env` also takes assignments before its command.
            while words.get(i).is_some_and(|w| is_assignment(w)) {
                i += 1;
            }
        } else if name == "timeout" {
            // `timeout [opts] DURATION cmd`
            i = skip_options(words, i + 1, &["-s", "--signal", "-k", "--kill-after"]) + 1;
        } else if name == "flock" {
            // `flock [opts] LOCKFILE cmd` (the `-c` form is handled as a shell string).
            let at = skip_options(words, i + 1, &["-w", "--timeout", "-E"]);
            i = at + 1;
            if words.get(i) == Some(&"-c") || words.get(i) == Some(&"--command") {
                return shell_program(&words[i + 1..], depth);
            }
        } else if is_shell(name) {
            let mut j = i + 1;
            while let Some(flag) = words.get(j).filter(|f| f.starts_with('-')) {
                j += 1;
                if !flag.starts_with("--") && flag.contains('c') {
                    return shell_program(&words[j..], depth);
                }
            }
            // `bash /srv/run.sh args`: the script file is the program.
            return named(words, j);
        } else if matches!(name, "uv" | "poetry" | "pipenv" | "pdm" | "hatch" | "rye")
            && words.get(i + 1) == Some(&"run")
        {
            i = skip_options(words, i + 2, RUNNER_VALUE_FLAGS);
        } else if name == "bundle" && words.get(i + 1) == Some(&"exec") {
            i += 2;
        } else if matches!(name, "npm" | "pnpm" | "yarn") {
            // `npm run refresh`: the package script's name is the program.
            let at = skip_options(words, i + 1, &["--prefix", "-C", "--cwd"]);
            let at = if words.get(at) == Some(&"run") {
                at + 1
            } else {
                at
            };
            return named(words, at);
        } else if name == "deno" && words.get(i + 1) == Some(&"run") {
            return named(words, skip_options(words, i + 2, &["--config", "-c"]));
        } else if let Some(flags) = interpreter_value_flags(name) {
            return interpreter_program(words, i, name, flags);
        } else {
            return named(words, i);
        }
    }
    None
}

/// Options of `uv run`, `poetry run` and the like that take a value.
const RUNNER_VALUE_FLAGS: &[&str] = &[
    "--with",
    "--python",
    "-p",
    "--project",
    "--directory",
    "--env-file",
    "--extra",
    "--group",
    "--package",
    "--index",
];

/// The program an interpreter (`words[i]`, named `name`) runs: a module, a script, or
/// inline code; `flags` are its options that take a value.
fn interpreter_program<'a>(
    words: &[&'a str],
    i: usize,
    name: &str,
    flags: &[&str],
) -> Option<Program<'a>> {
    let mut j = i + 1;
    while let Some(&flag) = words.get(j).filter(|f| f.starts_with('-') && **f != "-") {
        // `python -m app.jobs …`: the module is the program, named whole.
        if is_python(name) && flag == "-m" {
            return named(words, j + 1);
        }
        if let Some(module) = flag.strip_prefix("-m").filter(|_| is_python(name)) {
            return Some(Program {
                script: module.to_string(),
                args: without_redirections(&words[j + 1..]),
            });
        }
        // Inline code: the interpreter with its flag is all there is to name.
        let inline = if is_python(name) {
            flag == "-c"
        } else {
            matches!(flag, "-e" | "--eval")
        };
        if inline {
            return Some(Program {
                script: format!("{name} {flag}"),
                args: Vec::new(),
            });
        }
        j += if flags.contains(&flag) { 2 } else { 1 };
    }
    named(words, j).or(Some(Program {
        script: name.to_string(),
        args: Vec::new(),
    }))
}

fn shell_program<'a>(script: &[&'a str], depth: usize) -> Option<Program<'a>> {
    if depth >= 4 {
        return None;
    }
    program_of(shell_command(script), depth + 1)
}

fn named<'a>(words: &[&'a str], at: usize) -> Option<Program<'a>> {
    let first = words.get(at)?;
    Some(Program {
        script: basename(first).to_string(),
        args: without_redirections(&words[at + 1..]),
    })
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Number of leading words all of `lists` share.
fn common_prefix(lists: &[&[&str]]) -> usize {
    let shortest = lists.iter().map(|l| l.len()).min().unwrap_or(0);
    let Some(first) = lists.first() else {
        return 0;
    };
    (0..shortest)
        .take_while(|&k| lists.iter().all(|l| l[k] == first[k]))
        .count()
}

/// Number of trailing words all of `lists` share, not overlapping the first `prefix`.
fn common_suffix(lists: &[&[&str]], prefix: usize) -> usize {
    let room = lists.iter().map(|l| l.len() - prefix).min().unwrap_or(0);
    let Some(first) = lists.first() else {
        return 0;
    };
    (0..room)
        .take_while(|&k| {
            lists
                .iter()
                .all(|l| l[l.len() - 1 - k] == first[first.len() - 1 - k])
        })
        .count()
}

fn render(script: &str, words: &[&str]) -> String {
    let mut name = script.to_string();
    for w in words.iter().take(MAX_ARGS) {
        name.push(' ');
        name.push_str(&cut(w, MAX_WORD));
    }
    if words.len() > MAX_ARGS {
        name.push_str(" …");
    }
    cut(&name, MAX_NAME)
}

/// One readable name per command line of a group of tasks, in order: the script and the
/// words that differ between the tasks running the same script. Names are distinct when the
/// command lines are; where shortening cannot tell two apart, the command line itself
/// (bounded) is the name.
pub fn short_names(cmdlines: &[&str]) -> Vec<String> {
    let programs: Vec<Option<Program<'_>>> = cmdlines.iter().map(|c| program(c)).collect();
    let mut names: Vec<String> = Vec::with_capacity(cmdlines.len());
    for (i, p) in programs.iter().enumerate() {
        let Some(p) = p else {
            names.push(cut(cmdlines[i].trim(), MAX_FALLBACK));
            continue;
        };
        let siblings: Vec<&[&str]> = programs
            .iter()
            .flatten()
            .filter(|o| o.script == p.script)
            .map(|o| o.args.as_slice())
            .collect();
        if siblings.len() < 2 {
            // Alone with its script: the script says which task it is; a subcommand
            // (`manage.py send_invoices`) says what it does.
            let sub: Vec<&str> = p
                .args
                .iter()
                .take_while(|w| !w.starts_with('-'))
                .take(LONE_SUBCOMMAND_WORDS)
                .copied()
                .collect();
            names.push(render(&p.script, &sub));
            continue;
        }
        let prefix = common_prefix(&siblings);
        let suffix = common_suffix(&siblings, prefix);
        // A differing option value keeps its option's name (`--region eu`, not `eu`).
        let from = if prefix > 0
            && p.args[prefix - 1].starts_with('-')
            && !p.args[prefix - 1].contains('=')
        {
            prefix - 1
        } else {
            prefix
        };
        names.push(render(&p.script, &p.args[from..p.args.len() - suffix]));
    }
    // Command lines that shorten alike (`python3 -u task.py a` and `python3 task.py a`) are
    // named by themselves, and numbered if even that is cut alike.
    for i in 0..names.len() {
        let clash = (0..names.len()).any(|j| j != i && names[j] == names[i]);
        if clash {
            for j in (0..names.len())
                .filter(|&j| names[j] == names[i])
                .collect::<Vec<_>>()
            {
                names[j] = cut(cmdlines[j].trim(), MAX_FALLBACK);
            }
        }
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for name in &mut names {
        let n = seen.entry(name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            name.push_str(&format!(" ({n})"));
        }
    }
    names
}

#[cfg(test)]
mod tests;
