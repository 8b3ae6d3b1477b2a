//! `gptoss chat` driven as a script would (stdin piped) and as a person would (a pseudo-terminal): the
//! conversation is kept and rendered as Harmony, the commands change it, the first answer is exactly
//! `run`'s, and Ctrl-C stops an answer without ending the program.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4")
}

fn m() -> String {
    model().to_str().unwrap().to_string()
}

/// Runs `gptoss chat` with `input` on stdin; returns (stdout, stderr).
fn chat_piped(args: &[&str], input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(["chat", "-m", &m(), "--device", "cpu"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

/// The prompts `--verbose-prompt` printed, in order.
fn prompts(stderr: &str) -> Vec<String> {
    stderr
        .split("[prompt, ")
        .skip(1)
        .map(|p| {
            let body = p.split_once("]\n").unwrap().1;
            // The prompt ends at the assistant header the answer follows.
            let end = body.rfind("<|start|>assistant").unwrap() + "<|start|>assistant".len();
            body[..end].to_string()
        })
        .collect()
}

#[test]
fn piped_conversation_keeps_history_and_obeys_commands() {
    let input = "Hello\n/effort low\nSecond\n/reset\n/system Be terse.\n\"\"\"\nline one\nline two\n\"\"\"\n/exit\nnever read\n";
    let (stdout, stderr) = chat_piped(&["-n", "8", "--verbose-prompt"], input);
    let p = prompts(&stderr);
    assert_eq!(p.len(), 3, "{stderr}");
    // The first answer is exactly what `run` gives for the same prompt and flags.
    let run = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args([
            "run",
            "-m",
            &m(),
            "--device",
            "cpu",
            "-p",
            "Hello",
            "-n",
            "8",
            "--json",
        ])
        .output()
        .unwrap();
    let run: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let first = run["content"].as_str().unwrap();
    assert!(
        stdout.starts_with(&format!("{first}\n")),
        "chat: {stdout:?}\nrun: {first:?}"
    );
    assert!(
        p[0].contains("Reasoning: medium")
            && p[0].ends_with("<|start|>user<|message|>Hello<|end|><|start|>assistant"),
        "{}",
        p[0]
    );
    // Turn two: effort low, the first exchange kept (the answer on the final channel).
    assert!(p[1].contains("Reasoning: low"), "{}", p[1]);
    let history = format!("<|start|>user<|message|>Hello<|end|><|start|>assistant<|channel|>final<|message|>{first}<|end|><|start|>user<|message|>Second<|end|><|start|>assistant");
    assert!(p[1].ends_with(&history), "{}\nwant the end {history}", p[1]);
    // After /reset and /system: no history, developer instructions, a message of two lines.
    assert!(
        !p[2].contains("Hello") && p[2].contains("Reasoning: low"),
        "{}",
        p[2]
    );
    assert!(
        p[2].contains("<|start|>developer<|message|># Instructions\n\nBe terse.<|end|>"),
        "{}",
        p[2]
    );
    assert!(
        p[2].ends_with("<|start|>user<|message|>line one\nline two<|end|><|start|>assistant"),
        "{}",
        p[2]
    );
    assert!(
        stderr.contains("[conversation cleared]") && stderr.contains("[answer cut at -n 8 tokens]")
    );
    // Without a terminal there is no prompt marker on stdout.
    assert!(!stdout.contains(">>>"));
}

#[test]
fn piped_errors_name_the_command_and_the_full_context() {
    let (_, stderr) = chat_piped(&["-n", "4", "-c", "64"], "/effort extreme\n/bogus\nHello\n");
    assert!(
        stderr.contains("/effort: expected low, medium or high, got \"extreme\""),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    // The Harmony system message alone is longer than 64 tokens: the message is refused, not cut.
    assert!(
        stderr.contains("the context holds 64: /reset, or restart with a larger -c/--ctx"),
        "{stderr}"
    );
}

/// The numbers of each `--stats` line: (prompt, reused, computed, generated, run through the model).
fn turn_stats(stderr: &str) -> Vec<[usize; 5]> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[prompt "))
        .map(|l| {
            let number_before = |word: &str| -> usize {
                let head = &l[..l.find(word).unwrap_or_else(|| panic!("{word} in {l}"))];
                head.trim_end()
                    .rsplit([' ', ':'])
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            [
                l.split(' ').next().unwrap().parse().unwrap(),
                number_before(" reused"),
                number_before(" computed"),
                number_before(" generated"),
                number_before(" run through the model"),
            ]
        })
        .collect()
}

#[test]
fn each_turn_reuses_the_kv_of_the_turns_before_it() {
    let input = "Hello\nSecond message\nThird one\n";
    let (stdout, stderr) = chat_piped(&["-n", "8", "--stats"], input);
    let turns = turn_stats(&stderr);
    assert_eq!(turns.len(), 3, "{stderr}");
    let [first, second, third] = [turns[0], turns[1], turns[2]];
    assert_eq!(first[1], 0, "turn 1 has nothing to reuse: {stderr}");
    for (before, now) in [(first, second), (second, third)] {
        let [prompt, reused, computed, generated, run] = now;
        // The turn before's prompt is the start of this one: its whole 16-token blocks are reused (the
        // last block boundary before its final token, where the sliding window's ring was kept).
        assert_eq!(reused % 16, 0, "{stderr}");
        assert!(
            reused + 16 > before[0] && reused < before[0] + 1,
            "{stderr}"
        );
        assert_eq!(computed, prompt - reused, "{stderr}");
        // Only the new prompt tokens were prefilled; then each generated token but the last was fed back.
        assert_eq!(run, computed + generated - 1, "{stderr}");
    }
    // Without the prefix cache every turn computes its whole prompt, and the answers are the same.
    let (plain_out, plain_err) = chat_piped(&["-n", "8", "--stats", "--no-prefix-cache"], input);
    let plain = turn_stats(&plain_err);
    assert_eq!(plain.len(), 3, "{plain_err}");
    for (p, t) in plain.iter().zip(&turns) {
        assert_eq!(
            (p[0], p[1], p[2], p[3]),
            (t[0], 0, t[0], t[3]),
            "{plain_err}"
        );
        assert_eq!(p[4], t[0] + t[3] - 1, "{plain_err}");
    }
    assert_eq!(plain_out, stdout);
}

/// A child on a new pseudo-terminal and everything it wrote there.
struct Pty {
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
    child: std::process::Child,
}

impl Pty {
    fn spawn(args: &[&str]) -> Pty {
        // SAFETY: plain libc calls on fds this test owns.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gptoss"));
        cmd.args(args)
            .env_remove("NO_COLOR")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose controlling
        // terminal is the pty, so Ctrl-C typed there sends SIGINT to the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            seen,
            child,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until the output holds `needle` `count` times.
    fn wait_for(&self, needle: &str, count: usize) {
        let started = Instant::now();
        while self.text().matches(needle).count() < count {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no {needle:?} (x{count}) in {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

impl Drop for Pty {
    /// A failed test leaves no chat running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn on_a_terminal_ctrl_c_stops_the_answer_not_the_program() {
    // A long message prefilled a token a step keeps the answer busy for seconds (the tiny model's own
    // answers end on a stop token within milliseconds), so Ctrl-C surely lands inside it.
    let args = [
        "chat",
        "-m",
        &m(),
        "--device",
        "cpu",
        "-c",
        "8192",
        "--batch-tokens",
        "1",
    ];
    let mut pty = Pty::spawn(&args);
    pty.wait_for(">>> ", 1);
    assert!(pty.text().contains("/help for commands"), "{}", pty.text());
    pty.send(b"\"\"\"\r");
    for _ in 0..200 {
        pty.send(
            b"the quick brown fox jumps over the lazy dog again and again and again and again\r",
        );
    }
    pty.send(b"\"\"\"\r");
    std::thread::sleep(Duration::from_millis(300));
    pty.send(b"\x03");
    // `[stopped]` is printed only for an answer the user stopped.
    pty.wait_for("[stopped]", 1);
    pty.wait_for(">>> ", 2);
    // The program is still there: it answers the next message and quits on /exit.
    pty.send(b"/effort high\r");
    pty.wait_for("[reasoning effort high]", 1);
    pty.send(b"/exit\r");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = pty.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "chat did not exit: {}",
            pty.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}: {}", pty.text());
    assert!(!pty.text().contains("[answer cut"), "{}", pty.text());
}
