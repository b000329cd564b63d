//! Tests of `ferrotron::data`: tokenizers, shard files, prepare, the built-in
//! corpus and the loader.

use anyhow::Result;
use ferrotron::data::builtin;
use ferrotron::data::{
    prepare, read_shard, unigram_entropy, write_shard, Batch, Dataset, Loader, LoaderState,
    PrepareOptions, Split, Tokenizer, TokenizerKind,
};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------- tokenizer

const SAMPLES: &[&str] = &[
    "",
    "Hello world",
    "café naïve résumé Ångström",
    "日本語のテキスト、中文文本，한국어",
    "emoji 🎉🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "RTL: שלום עולם and مرحبا بالعالم",
    "combining: e\u{301} a\u{308} n\u{303}, zalgo t\u{336}\u{335}e\u{337}",
    "whitespace   runs\t\ttabs\n\n\nnewlines \r\n crlf   ",
    "literal <|endoftext|> inside text <|endoftext|>",
    "code: fn main() { println!(\"{}\", 1 + 2); }",
    "\u{0}\u{1} control and \u{FEFF} bom \u{10FFFF}",
];

#[test]
fn tokenizers_round_trip_varied_unicode() -> Result<()> {
    for name in ["bytes", "gpt2"] {
        let tok = Tokenizer::from_name(name)?;
        for s in SAMPLES {
            let ids = tok.encode(s);
            assert!(
                ids.iter().all(|&t| (t as usize) < tok.vocab_size()),
                "{name}: id out of range"
            );
            assert_eq!(tok.decode(&ids), *s, "{name} round trip of {s:?}");
        }
    }
    Ok(())
}

#[test]
fn tokenizer_metadata() -> Result<()> {
    let bytes = Tokenizer::from_name("bytes")?;
    assert_eq!(
        (bytes.name(), bytes.vocab_size(), bytes.eot()),
        ("bytes", 256, None)
    );
    let gpt2 = Tokenizer::from_name("gpt2")?;
    assert_eq!(
        (gpt2.name(), gpt2.vocab_size(), gpt2.eot()),
        ("gpt2", 50257, Some(50256))
    );
    let err = Tokenizer::from_name("sentencepiece")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sentencepiece") && err.contains("gpt2"),
        "{err}"
    );
    Ok(())
}

#[test]
fn gpt2_known_ids() -> Result<()> {
    let tok = Tokenizer::from_name("gpt2")?;
    assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
    assert_eq!(tok.encode(" the"), vec![262]);
    assert_eq!(tok.encode("\n"), vec![198]);
    assert_eq!(tok.decode(&[50256]), "<|endoftext|>");
    Ok(())
}

#[test]
fn gpt2_special_token_text_is_plain_text() -> Result<()> {
    // Documents must not be able to forge document boundaries.
    let tok = Tokenizer::from_name("gpt2")?;
    let ids = tok.encode("a<|endoftext|>b");
    assert!(!ids.contains(&50256), "{ids:?}");
    assert!(ids.len() > 3);
    assert_eq!(tok.decode(&ids), "a<|endoftext|>b");
    Ok(())
}

#[test]
fn decode_is_lossy_not_panicking() -> Result<()> {
    let bytes = Tokenizer::from_name("bytes")?;
    // A euro sign cut after two of its three bytes, then 'x'.
    assert_eq!(bytes.decode(&[0xE2, 0x82, b'x' as u32]), "\u{FFFD}x");
    assert_eq!(bytes.decode(&[300]), "\u{FFFD}");
    let gpt2 = Tokenizer::from_name("gpt2")?;
    let euro = gpt2.encode("🎉");
    assert!(euro.len() > 1, "🎉 should be several byte tokens: {euro:?}");
    assert!(gpt2.decode(&euro[..1]).contains('\u{FFFD}'));
    assert_eq!(gpt2.decode(&[15496, 99_999]), "Hello\u{FFFD}");
    Ok(())
}

// ---------------------------------------------------------------- shards

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn shard_round_trip() -> Result<()> {
    let dir = tmp();
    let path = dir.path().join("s.bin");
    let tokens: Vec<u32> = (0..50257).step_by(7).chain([50256, 0]).collect();
    write_shard(&path, TokenizerKind::Gpt2, &tokens)?;
    let shard = read_shard(&path)?;
    assert_eq!(shard.tokens, tokens);
    assert_eq!(shard.tokenizer, TokenizerKind::Gpt2);
    assert_eq!(
        fs::metadata(&path)?.len(),
        32 + 2 * tokens.len() as u64,
        "u16 storage"
    );
    // No temporary files left behind.
    assert_eq!(fs::read_dir(dir.path())?.count(), 1);

    write_shard(&path, TokenizerKind::Bytes, &[])?;
    assert!(read_shard(&path)?.tokens.is_empty());
    Ok(())
}

#[test]
fn shard_writer_rejects_out_of_vocab_ids() {
    let dir = tmp();
    let path = dir.path().join("s.bin");
    let err = write_shard(&path, TokenizerKind::Bytes, &[1, 256])
        .unwrap_err()
        .to_string();
    assert!(err.contains("256") && err.contains("vocabulary"), "{err}");
    assert!(!path.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp file removed"
    );
}

fn header(version: u32, dtype: u32, tok: u32, count: u64) -> Vec<u8> {
    let mut h = b"FTRNTOK\0".to_vec();
    h.extend(version.to_le_bytes());
    h.extend(dtype.to_le_bytes());
    h.extend(tok.to_le_bytes());
    h.extend(0u32.to_le_bytes());
    h.extend(count.to_le_bytes());
    h
}

/// Writes `bytes` to a file, reads it as a shard, returns the error message.
fn shard_error(name: &str, bytes: &[u8]) -> String {
    let dir = tmp();
    let path = dir.path().join(name);
    fs::write(&path, bytes).unwrap();
    let msg = format!("{:#}", read_shard(&path).unwrap_err());
    assert!(msg.contains(name), "error should name the file: {msg}");
    // The streaming reader used for training data rejects it the same way.
    let streamed = format!("{:#}", ferrotron::data::shard::open_shard(&path).unwrap_err());
    assert!(streamed.starts_with(&msg), "streamed: {streamed}\nin memory: {msg}");
    msg
}

#[test]
fn shard_reader_reads_u32_tokens() -> Result<()> {
    let dir = tmp();
    let path = dir.path().join("wide.bin");
    let mut bytes = header(1, 4, 2, 2);
    bytes.extend(50256u32.to_le_bytes());
    bytes.extend(7u32.to_le_bytes());
    fs::write(&path, bytes)?;
    assert_eq!(read_shard(&path)?.tokens, vec![50256, 7]);
    Ok(())
}

#[test]
fn shard_rejections_name_file_and_problem() {
    let m = shard_error("foreign.bin", b"PK\x03\x04 this is a zip file, honest");
    assert!(m.contains("not a ferrotron token shard"), "{m}");

    let m = shard_error("empty.bin", b"");
    assert!(m.contains("empty"), "{m}");

    let mut t = header(1, 2, 1, 10);
    t.extend([1u8, 0, 2, 0]);
    let m = shard_error("truncated.bin", &t);
    assert!(
        m.contains("truncated") && m.contains("52 bytes") && m.contains("36 bytes"),
        "{m}"
    );

    let m = shard_error("short_header.bin", b"FTRNTOK\0\x01\x00");
    assert!(m.contains("truncated"), "{m}");

    let m = shard_error("version.bin", &header(99, 2, 1, 0));
    assert!(m.contains("unsupported") && m.contains("version 99"), "{m}");

    let m = shard_error("dtype.bin", &header(1, 3, 1, 0));
    assert!(m.contains("unknown token dtype code 3"), "{m}");

    let m = shard_error("tokenizer.bin", &header(1, 2, 77, 0));
    assert!(m.contains("unknown tokenizer code 77"), "{m}");

    let mut v = header(1, 2, 1, 2);
    v.extend([5u8, 0, 0x2C, 0x01]); // 5, then 300 ≥ 256
    let m = shard_error("vocab.bin", &v);
    assert!(m.contains("300") && m.contains("256"), "{m}");
}

/// Version 2 headers carry the vocabulary size of a Hugging Face
/// tokenizer (code 3); ids at or above it, and headers that cannot describe
/// their vocabulary, are refused. Bytes and GPT-2 keep writing version 1.
#[test]
fn shard_version_2_carries_the_vocabulary_size() -> Result<()> {
    let dir = tmp();
    let path = dir.path().join("hf.bin");
    let tokens: Vec<u32> = vec![0, 65_535, 65_536, 128_255];
    ferrotron::data::write_shard_vocab(&path, TokenizerKind::Hf, 128_256, &tokens)?;
    let bytes = fs::read(&path)?;
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into()?), 2, "version 2");
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into()?), 128_256, "vocabulary size");
    let shard = read_shard(&path)?;
    assert_eq!((shard.tokens, shard.vocab_size, shard.dtype), (tokens, 128_256, ferrotron::data::Dtype::U32));
    let err = ferrotron::data::write_shard_vocab(&path, TokenizerKind::Hf, 1000, &[1000]).unwrap_err().to_string();
    assert!(err.contains("1000") && err.contains("vocabulary"), "{err}");
    assert!(write_shard(&path, TokenizerKind::Hf, &[1]).is_err(), "an hf shard needs its vocabulary size");
    // Built-in tokenizers: version 1, as before.
    write_shard(&path, TokenizerKind::Bytes, &[1, 2])?;
    assert_eq!(u32::from_le_bytes(fs::read(&path)?[8..12].try_into()?), 1);

    let mut v2 = header(2, 2, 3, 2);
    v2[20..24].copy_from_slice(&300u32.to_le_bytes());
    v2.extend([5u8, 0, 0x2C, 0x01]); // 5, then 300 >= 300
    let m = shard_error("v2vocab.bin", &v2);
    assert!(m.contains("300") && m.contains("hf"), "{m}");
    let m = shard_error("v1hf.bin", &header(1, 2, 3, 0));
    assert!(m.contains("version 1") && m.contains("hf"), "{m}");
    let m = shard_error("v2zero.bin", &header(2, 4, 3, 0));
    assert!(m.contains("vocabulary size 0"), "{m}");
    let mut narrow = header(2, 2, 3, 0);
    narrow[20..24].copy_from_slice(&128_256u32.to_le_bytes());
    let m = shard_error("narrow.bin", &narrow);
    assert!(m.contains("u16") && m.contains("128256"), "{m}");
    Ok(())
}

// ---------------------------------------------------------------- prepare

fn quiet(tokenizer: &str) -> PrepareOptions {
    PrepareOptions {
        tokenizer: tokenizer.into(),
        progress: false,
        ..Default::default()
    }
}

fn write_parquet(path: &Path, rows: &[Option<&str>]) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = parquet::schema::parser::parse_message_type(
        "message doc { required int32 id; optional binary text (UTF8); }",
    )?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w =
        SerializedFileWriter::new(fs::File::create(path)?, Arc::new(schema), Arc::new(props))?;
    let mut rg = w.next_row_group()?;
    let ids: Vec<i32> = (0..rows.len() as i32).collect();
    let mut col = rg.next_column()?.expect("id column");
    col.typed::<Int32Type>().write_batch(&ids, None, None)?;
    col.close()?;
    let values: Vec<ByteArray> = rows.iter().flatten().map(|s| ByteArray::from(*s)).collect();
    let defs: Vec<i16> = rows.iter().map(|r| r.is_some() as i16).collect();
    let mut col = rg.next_column()?.expect("text column");
    col.typed::<ByteArrayType>()
        .write_batch(&values, Some(&defs), None)?;
    col.close()?;
    rg.close()?;
    w.close()?;
    Ok(())
}

/// A folder with every input kind; returns (root, documents in order).
fn corpus(root: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(root.join("nested/deeper"))?;
    fs::create_dir_all(root.join(".git"))?;
    fs::write(root.join("a.txt"), "Alpha document.\nSecond line.")?;
    fs::write(root.join("nested/b.md"), "# Beta\nmarkdown body\n")?;
    fs::write(root.join("nested/deeper/c.rs"), "fn gamma() {}\n")?;
    fs::write(
        root.join("nested/image.png"),
        [0x89u8, b'P', b'N', b'G', 0xFF, 0x00, 0xFE],
    )?;
    fs::write(root.join(".git/config"), "hidden, must be ignored")?;
    fs::write(
        root.join("nested/docs.jsonl"),
        "{\"text\": \"Delta from jsonl\", \"id\": 1}\n\n{\"text\": \"Épsilon 🎉\"}\n",
    )?;
    write_parquet(
        &root.join("z.parquet"),
        &[Some("Zeta row one"), None, Some("Eta row three")],
    )?;
    // Sorted walk order: a.txt, nested/b.md, nested/deeper/c.rs, nested/docs.jsonl,
    // (image skipped), z.parquet.
    Ok(vec![
        "Alpha document.\nSecond line.".into(),
        "# Beta\nmarkdown body\n".into(),
        "fn gamma() {}\n".into(),
        "Delta from jsonl".into(),
        "Épsilon 🎉".into(),
        "Zeta row one".into(),
        "Eta row three".into(),
    ])
}

fn all_tokens(ds: &Dataset) -> Vec<u32> {
    [ds.tokens(Split::Train).unwrap(), ds.tokens(Split::Val).unwrap()].concat()
}

#[test]
fn prepare_reads_every_input_kind() -> Result<()> {
    let dir = tmp();
    let docs = corpus(&dir.path().join("in"))?;
    let out = dir.path().join("out");
    let sum = prepare(&[dir.path().join("in")], &out, &quiet("gpt2"))?;
    assert_eq!(
        sum.train_documents + sum.val_documents,
        docs.len() as u64,
        "{sum}"
    );
    assert_eq!(sum.skipped_files, 1, "the PNG is skipped");
    assert!(sum.val_documents >= 1, "some validation data is guaranteed");
    assert!(sum.to_string().contains("skipped 1"), "{sum}");

    let ds = Dataset::open(out.to_str().unwrap())?;
    assert_eq!(ds.tokenizer.kind(), TokenizerKind::Gpt2);
    let tokens = all_tokens(&ds);
    assert_eq!(tokens.len() as u64, sum.train_tokens + sum.val_tokens);
    assert_eq!(
        tokens.iter().filter(|&&t| t == 50256).count(),
        docs.len(),
        "one EOT per document"
    );
    let text = ds.tokenizer.decode(&tokens);
    for d in &docs {
        assert!(text.contains(d.as_str()), "missing {d:?} in {text:?}");
    }
    assert!(!text.contains("hidden"));

    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("meta.json"))?)?;
    assert_eq!(meta["tokenizer"], "gpt2");
    assert_eq!(meta["train"]["tokens"], sum.train_tokens);
    assert_eq!(meta["sources"][0]["documents"], 7);
    assert!(meta["created"].as_str().unwrap().ends_with('Z'));
    assert!(out.join("train_000000.bin").exists() && out.join("val_000000.bin").exists());
    Ok(())
}

#[test]
fn prepare_bytes_order_and_multiple_shards() -> Result<()> {
    let dir = tmp();
    let docs = corpus(&dir.path().join("in"))?;
    let out = dir.path().join("out");
    let opts = PrepareOptions {
        shard_tokens: 16,
        val_fraction: 0.0,
        ..quiet("bytes")
    };
    let sum = prepare(&[dir.path().join("in")], &out, &opts)?;
    assert!(sum.train_shards > 3, "{sum}");
    assert_eq!(sum.val_tokens, 0);
    // With no validation split, the train stream is the documents in order,
    // each ending in a newline.
    let expected: String = docs
        .iter()
        .map(|d| {
            if d.ends_with('\n') {
                d.clone()
            } else {
                format!("{d}\n")
            }
        })
        .collect();
    let ds = Dataset::open(out.to_str().unwrap())?;
    assert_eq!(ds.tokenizer.decode(&ds.tokens(Split::Train).unwrap()), expected);
    Ok(())
}

/// Shards stay on disk; windows that cross shard boundaries read the same
/// tokens as the concatenated stream in memory.
#[test]
fn loader_over_many_shards_matches_memory() -> Result<()> {
    let dir = tmp();
    corpus(&dir.path().join("in"))?;
    let out = dir.path().join("out");
    let opts = PrepareOptions { shard_tokens: 16, val_fraction: 0.0, ..quiet("bytes") };
    prepare(&[dir.path().join("in")], &out, &opts)?;
    let on_disk = Dataset::open(out.to_str().unwrap())?;
    let all = on_disk.tokens(Split::Train)?;
    let in_memory = Dataset::from_tokens(on_disk.tokenizer.clone(), all.clone(), all, "memory");
    let mut a = Loader::new(&on_disk, Split::Train, 3, 40, 9, 0, 1)?;
    let mut b = Loader::new(&in_memory, Split::Train, 3, 40, 9, 0, 1)?;
    for _ in 0..20 {
        let (x, y) = (a.next_batch()?, b.next_batch()?);
        assert_eq!((x.inputs, x.targets), (y.inputs, y.targets));
    }
    Ok(())
}

#[test]
fn prepare_is_deterministic() -> Result<()> {
    let dir = tmp();
    let input = dir.path().join("in");
    fs::create_dir_all(&input)?;
    for i in 0..300 {
        fs::write(
            input.join(format!("doc{i:03}.txt")),
            format!("Document number {i}. ").repeat(1 + i % 5),
        )?;
    }
    let opts = PrepareOptions {
        val_fraction: 0.1,
        shard_tokens: 1000,
        ..quiet("gpt2")
    };
    let s1 = prepare(std::slice::from_ref(&input), &dir.path().join("o1"), &opts)?;
    // Same result on a single thread as on the default pool.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let s2 =
        one.install(|| prepare(std::slice::from_ref(&input), &dir.path().join("o2"), &opts))?;
    assert!(s1.val_documents > 10 && s1.val_documents < 60, "{s1}");
    assert_eq!(
        (s1.train_tokens, s1.val_tokens),
        (s2.train_tokens, s2.val_tokens)
    );
    for name in ["train_000000.bin", "train_000001.bin", "val_000000.bin"] {
        assert_eq!(
            fs::read(dir.path().join("o1").join(name))?,
            fs::read(dir.path().join("o2").join(name))?,
            "{name}"
        );
    }
    let other = PrepareOptions { seed: 7, ..opts };
    let s3 = prepare(&[input], &dir.path().join("o3"), &other)?;
    assert_ne!(s1.val_tokens, s3.val_tokens, "the seed changes the split");
    Ok(())
}

#[test]
fn prepare_single_document_still_has_validation() -> Result<()> {
    let dir = tmp();
    let file = dir.path().join("book.txt");
    fs::write(&file, "All the world's a stage. ".repeat(400))?;
    let sum = prepare(&[file], &dir.path().join("out"), &quiet("gpt2"))?;
    assert!(
        sum.val_tokens >= 1 && sum.train_tokens > sum.val_tokens * 50,
        "{sum}"
    );
    Ok(())
}

#[test]
fn prepare_bad_jsonl_line_names_file_and_line() -> Result<()> {
    let dir = tmp();
    let file = dir.path().join("bad.jsonl");
    fs::write(
        &file,
        "{\"text\": \"ok\"}\n{\"text\": \"ok too\"}\n{\"txt\": \"typo\"}\n",
    )?;
    let out = dir.path().join("out");
    let err = format!(
        "{:#}",
        prepare(std::slice::from_ref(&file), &out, &quiet("bytes")).unwrap_err()
    );
    assert!(
        err.contains("bad.jsonl:3") && err.contains("\"text\"") && err.contains("txt"),
        "{err}"
    );
    fs::write(&file, "{\"text\": \"ok\"}\nnot json at all\n")?;
    let err = format!("{:#}", prepare(&[file], &out, &quiet("bytes")).unwrap_err());
    assert!(
        err.contains("bad.jsonl:2") && err.contains("not valid JSON"),
        "{err}"
    );
    // A failed run leaves no shards and no meta.json behind.
    let left: Vec<_> = fs::read_dir(&out)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

#[test]
fn prepare_parquet_errors() -> Result<()> {
    let dir = tmp();
    let file = dir.path().join("d.parquet");
    write_parquet(&file, &[Some("x")])?;
    let opts = PrepareOptions {
        text_key: "content".into(),
        ..quiet("bytes")
    };
    let err = format!(
        "{:#}",
        prepare(&[file], &dir.path().join("o"), &opts).unwrap_err()
    );
    assert!(
        err.contains("d.parquet") && err.contains("`content`") && err.contains("id, text"),
        "{err}"
    );
    let fake = dir.path().join("fake.parquet");
    fs::write(&fake, "not parquet")?;
    let err = format!(
        "{:#}",
        prepare(&[fake], &dir.path().join("o"), &quiet("bytes")).unwrap_err()
    );
    assert!(
        err.contains("fake.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
    Ok(())
}

#[test]
fn prepare_refuses_existing_output_unless_overwrite() -> Result<()> {
    let dir = tmp();
    let file = dir.path().join("a.txt");
    fs::write(&file, "first version of the text")?;
    let out = dir.path().join("out");
    prepare(std::slice::from_ref(&file), &out, &quiet("bytes"))?;
    let before = fs::read(out.join("meta.json"))?;
    fs::write(&file, "second version")?;
    let err = prepare(std::slice::from_ref(&file), &out, &quiet("bytes"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds prepared data") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        fs::read(out.join("meta.json"))?,
        before,
        "existing data untouched"
    );
    let opts = PrepareOptions {
        overwrite: true,
        ..quiet("bytes")
    };
    prepare(&[file], &out, &opts)?;
    let ds = Dataset::open(out.to_str().unwrap())?;
    assert!(ds.tokenizer.decode(&all_tokens(&ds)).contains("second"));
    Ok(())
}

#[test]
fn prepare_input_errors() {
    let dir = tmp();
    let out = dir.path().join("out");
    let err = prepare(&[dir.path().join("nope.txt")], &out, &quiet("bytes"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.txt"), "{err}");
    assert!(!out.exists(), "nothing created for a bad input");
    let bin = dir.path().join("blob.dat");
    fs::write(&bin, [0xFFu8, 0xFE, 0x00]).unwrap();
    let err = prepare(&[bin], &out, &quiet("bytes"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blob.dat") && err.contains("not UTF-8"),
        "{err}"
    );
    let err = prepare(&[], &out, &quiet("bytes")).unwrap_err().to_string();
    assert!(err.contains("no inputs"), "{err}");
}

#[test]
fn open_missing_folder_says_what_to_run() {
    let dir = tmp();
    let path = dir.path().join("data/gpt2");
    let err = Dataset::open(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ferrotron prepare --input") && err.contains(path.to_str().unwrap()),
        "{err}"
    );
    fs::create_dir_all(&path).unwrap();
    let err = Dataset::open(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no token shards in") && err.contains("--out"),
        "{err}"
    );
}

// ---------------------------------------------------------------- loader

/// Tokens 0, 1, 2, ... so a window's content reveals its position.
fn counting(n: u32) -> Dataset {
    let vals: Vec<u32> = (0..n).map(|i| i % 50000).collect();
    Dataset::from_tokens(Tokenizer::Bytes, vals.clone(), vals[..500].to_vec(), "test")
}

fn batches(l: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| l.next_batch().unwrap()).collect()
}

fn window_starts(b: &Batch) -> Vec<u32> {
    b.inputs.chunks(b.seq).map(|row| row[0]).collect()
}

#[test]
fn loader_batches_are_shifted_windows() -> Result<()> {
    let ds = counting(10_000);
    let mut l = Loader::new(&ds, Split::Train, 4, 16, 1, 0, 1)?;
    let b = l.next_batch().unwrap();
    assert_eq!((b.inputs.len(), b.targets.len()), (64, 64));
    for (row, trow) in b.inputs.chunks(16).zip(b.targets.chunks(16)) {
        assert_eq!(row[0] % 16, 0, "windows start at multiples of seq");
        for k in 0..16 {
            assert_eq!(row[k], row[0] + k as u32);
            assert_eq!(trow[k], row[k] + 1);
        }
    }
    Ok(())
}

#[test]
fn loader_is_deterministic_and_epochs_cover_every_window() -> Result<()> {
    let ds = counting(1601); // exactly 100 windows of 16 + 1
    let mut a = Loader::new(&ds, Split::Train, 5, 16, 42, 0, 1)?;
    let mut b = Loader::new(&ds, Split::Train, 5, 16, 42, 0, 1)?;
    let mut c = Loader::new(&ds, Split::Train, 5, 16, 43, 0, 1)?;
    assert_eq!(a.windows_per_epoch(), 100);
    let (ea, eb, ec) = (
        batches(&mut a, 20),
        batches(&mut b, 20),
        batches(&mut c, 20),
    );
    assert_eq!(ea, eb);
    assert_ne!(ea, ec, "another seed, another order");
    let starts: Vec<u32> = ea.iter().flat_map(window_starts).collect();
    let unique: HashSet<u32> = starts.iter().copied().collect();
    assert_eq!(unique.len(), 100, "one epoch visits every window once");
    let e2: Vec<u32> = batches(&mut a, 20).iter().flat_map(window_starts).collect();
    assert_eq!(e2.iter().copied().collect::<HashSet<_>>(), unique);
    assert_ne!(e2, starts, "each epoch is reshuffled");
    assert_eq!(a.epoch(), 1);
    Ok(())
}

#[test]
fn loader_resume_gives_identical_batches() -> Result<()> {
    let ds = counting(3000);
    let mut a = Loader::new(&ds, Split::Train, 7, 32, 9, 0, 1)?;
    batches(&mut a, 11); // 77 windows of 93 per epoch: next batches cross an epoch
    let saved = serde_json::to_string(&a.state())?;
    let expected = batches(&mut a, 30);
    let mut b = Loader::new(&ds, Split::Train, 7, 32, 9, 0, 1)?;
    batches(&mut b, 3);
    b.restore(&serde_json::from_str::<LoaderState>(&saved)?)?;
    assert_eq!(batches(&mut b, 30), expected);

    let mut other_seq = Loader::new(&ds, Split::Train, 7, 16, 9, 0, 1)?;
    let err = other_seq
        .restore(&serde_json::from_str(&saved)?)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seq_len 32") && err.contains("seq_len 16"),
        "{err}"
    );
    Ok(())
}

#[test]
fn loader_data_parallel_ranks_are_disjoint() -> Result<()> {
    let ds = counting(3001); // 100 windows of seq 30
    let world = 3;
    let mut seen: Vec<HashSet<u32>> = Vec::new();
    for rank in 0..world {
        let mut l = Loader::new(&ds, Split::Train, 3, 30, 5, rank, world)?;
        assert_eq!(l.windows_per_epoch(), 33);
        let starts: Vec<u32> = batches(&mut l, 11).iter().flat_map(window_starts).collect();
        let set: HashSet<u32> = starts.iter().copied().collect();
        assert_eq!(set.len(), 33);
        seen.push(set);
    }
    for i in 0..world {
        for j in i + 1..world {
            assert!(seen[i].is_disjoint(&seen[j]), "ranks {i} and {j} overlap");
        }
    }
    let err = Loader::new(&ds, Split::Train, 1, 30, 5, 3, 3)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("rank 3"), "{err}");
    Ok(())
}

#[test]
fn loader_errors_and_val_reset() -> Result<()> {
    let ds = counting(2000); // val split: 500 tokens
    let err = Loader::new(&ds, Split::Val, 1, 500, 0, 0, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("only 500 tokens") && err.contains("501"),
        "{err}"
    );
    let mut val = Loader::new(&ds, Split::Val, 2, 20, 0, 0, 1)?;
    let first = batches(&mut val, 4);
    val.reset();
    assert_eq!(batches(&mut val, 4), first);
    Ok(())
}

#[test]
fn loader_over_prepared_folder() -> Result<()> {
    let dir = tmp();
    let file = dir.path().join("a.txt");
    fs::write(
        &file,
        "The quick brown fox jumps over the lazy dog. ".repeat(200),
    )?;
    let out: PathBuf = dir.path().join("out");
    prepare(
        &[file],
        &out,
        &PrepareOptions {
            shard_tokens: 100,
            ..quiet("gpt2")
        },
    )?;
    let ds = Dataset::open(out.to_str().unwrap())?;
    let mut l = Loader::new(&ds, Split::Train, 2, 64, 0, 0, 1)?;
    let b = l.next_batch().unwrap();
    assert!(b.inputs.iter().all(|&t| t < 50257));
    Ok(())
}

// ---------------------------------------------------------------- builtin

#[test]
fn builtin_corpus_properties() -> Result<()> {
    let t0 = std::time::Instant::now();
    let ds = Dataset::open("builtin")?;
    let elapsed = t0.elapsed();
    assert!(elapsed.as_secs_f64() < 3.0, "generation took {elapsed:?}");
    assert_eq!(ds.tokenizer.kind(), TokenizerKind::Bytes);
    let (train, val) = (ds.tokens(Split::Train).unwrap(), ds.tokens(Split::Val).unwrap());
    assert!(
        (2_000_000..4_000_000).contains(&train.len()),
        "{}",
        train.len()
    );
    assert!(val.len() >= 100_000);
    assert!(train.iter().all(|&t| t < 128), "ASCII only");
    let again = builtin::generate(builtin::TRAIN_SEED, builtin::TRAIN_BYTES);
    assert_eq!(
        again
            .as_bytes()
            .iter()
            .map(|&b| b as u32)
            .collect::<Vec<_>>(),
        train
    );
    assert_ne!(&train[..1000], &val[..1000], "validation uses another seed");
    let h = unigram_entropy(&train);
    assert!(h > 2.5 && h < 3.5, "unigram entropy {h} nats");
    Ok(())
}

#[test]
fn builtin_corpus_content_is_consistent() {
    let text = builtin::generate(3, 200_000);
    assert!(text.contains("Once upon a time"));
    assert!(text.contains(" says "));
    let mut checked = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.trim_end_matches('.').split(' ').collect();
        if let [a, op, b, "=", c] = parts[..] {
            let (a, b, c): (i64, i64, i64) =
                (a.parse().unwrap(), b.parse().unwrap(), c.parse().unwrap());
            let want = match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                _ => panic!("{line}"),
            };
            assert_eq!(c, want, "{line}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} equations");
}

#[test]
fn unigram_entropy_values() {
    assert_eq!(unigram_entropy(&[]), 0.0);
    assert_eq!(unigram_entropy(&[7, 7, 7]), 0.0);
    let uniform: Vec<u32> = (0..256).collect();
    assert!((unigram_entropy(&uniform) - 256f64.ln()).abs() < 1e-12);
    let big: Vec<u32> = vec![3_000_000, 5];
    assert!((unigram_entropy(&big) - 2f64.ln()).abs() < 1e-12);
}
