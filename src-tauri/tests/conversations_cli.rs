//! `smollm3-bot conversations`: export in three formats and import back, through the binary,
//! on a data folder made with the store's own API.

use smollm3_bot::store::{NewConversation, Role, Store, DATABASE_FILE};
use std::path::Path;
use std::process::Command;

fn bot(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .arg("conversations")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn conversations_export_and_import_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Store::open(data.join(DATABASE_FILE)).unwrap();
        let c = store
            .create_conversation(&NewConversation::new("Scripts", false, ""))
            .unwrap();
        let q = store
            .add_message(c.id, None, Role::User, "Show me a tag")
            .unwrap();
        store
            .add_message(
                c.id,
                Some(q),
                Role::Assistant,
                "Here: <script>alert(1)</script>",
            )
            .unwrap();
        store
            .add_message(c.id, None, Role::User, "An edited question")
            .unwrap();
    }
    let (ok, list, err) = bot(&data, &["list"]);
    assert!(ok, "{err}");
    assert!(list.contains("3 messages  Scripts"), "{list}");

    let json = dir.path().join("all.json");
    let (ok, _, err) = bot(&data, &["export", "--all", "--out", json.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, md, err) = bot(&data, &["export", "1", "--format", "md"]);
    assert!(ok, "{err}");
    assert!(md.starts_with("# Scripts"), "{md}");
    assert!(
        md.contains("An edited question"),
        "the branch on screen: {md}"
    );
    let (ok, jsonl, err) = bot(&data, &["export", "1", "--format", "jsonl"]);
    assert!(ok, "{err}");
    assert_eq!(jsonl.lines().count(), 1, "{jsonl}");

    // Into another data folder: the same conversation, all three messages, as text.
    let other = dir.path().join("other");
    let (ok, out, err) = bot(&other, &["import", json.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("(3 messages): Scripts"), "{out}");
    let (ok, md2, err) = bot(&other, &["export", "1", "--format", "md"]);
    assert!(ok, "{err}");
    assert_eq!(md2, md, "the import reads back as the original");
    let (_, all2, _) = bot(&other, &["export", "--all"]);
    let v: serde_json::Value = serde_json::from_str(&all2).unwrap();
    let texts: Vec<&str> = v["conversations"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "Show me a tag",
            "Here: <script>alert(1)</script>",
            "An edited question"
        ]
    );

    // A file that is not an export is refused, and nothing is added.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"format": "something else"}"#).unwrap();
    let (ok, _, err) = bot(&other, &["import", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("not a SmolLM3 Bot conversations file"),
        "{err}"
    );
    let (_, list, _) = bot(&other, &["list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
}
