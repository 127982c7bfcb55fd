//! Validation of manifests outside the cluster, with the rules the API server applies.
//!
//! One source of truth: the CRD schema generated from the Rust types. A manifest is checked the
//! way the API server checks it — schema defaults applied, structural constraints (types,
//! patterns, ranges, enums, required fields; unknown fields refused as `kubectl apply` does by
//! default), then the CEL rules of `x-kubernetes-validations` — and then the few facts no schema
//! can express (an IANA time zone that exists). `render`, `local` and the controller use it.
//!
//! A manifest directory holds `*.yaml` / `*.yml` regular files (symlinks followed) of at most
//! [`MAX_MANIFEST_FILE_BYTES`] each; anything else so named is an error naming the file
//! ([`read_manifest_files`], shared by [`load_dir`] and `tollgate local`'s change detector).
//! The schema validator is compiled once per process, never per object. The CEL rules are
//! checked natively ([`super::rules`]: one pure function per rule, same field and message as
//! the API server; kube-cel stays the oracle of the tests), on the typed object.
//!
//! Cost: an object is checked without building its defaulted copy. Defaults only
//! add fields the schema declares, with values valid for it, and the schema has no keyword a
//! new field can break (no `required` field with a default, no `minProperties`, `oneOf`...), so
//! an object is structurally valid exactly when its defaulted copy is; serde applies the same
//! defaults (the schema's are generated from them) when the typed object is read. Only an
//! invalid object is defaulted, and its errors come from the defaulted copy as before.
//! [`parallel_map`] checks many objects on every core, results in input order; a manifest
//! text's documents are validated in the parser's threads, each as soon as it is parsed.
//!
//! Manifest files may hold any number of documents; a file is bounded by size instead
//! ([`MAX_MANIFEST_BYTES`]), with an error naming the file and the limit beyond it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kube::core::cel::apply_defaults;
use serde_json::Value;

use super::{ModelRoute, ProviderBudget};

/// One invalid field of one object in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {doc}: {object}: {field}: {message}")]
pub struct ManifestError {
    /// File name (or other label of the input).
    pub source_name: String,
    /// 1-based index of the YAML document in the file.
    pub doc: usize,
    /// `Kind namespace/name`, as far as known.
    pub object: String,
    /// Field path (`spec.backends[1].weight`), or `(document)`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// An invalid field, before it is placed in a file and document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A validated tollgate object.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A ModelRoute.
    ModelRoute(Box<ModelRoute>),
    /// A ProviderBudget.
    ProviderBudget(Box<ProviderBudget>),
}

/// Every tollgate object of a manifest set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// ModelRoutes, in file and document order.
    pub routes: Vec<ModelRoute>,
    /// ProviderBudgets, in file and document order.
    pub budgets: Vec<ProviderBudget>,
    /// Documents of other kinds, skipped (`file: document N: Kind name`).
    pub skipped: Vec<String>,
}

struct KindSchema {
    schema: Value,
    structural: jsonschema::Validator,
    /// The fields the schema declares, for [`unknown_fields`].
    fields: Fields,
}

fn kind_schema(kind: &str) -> Option<&'static Result<KindSchema, String>> {
    static ROUTE: OnceLock<Result<KindSchema, String>> = OnceLock::new();
    static BUDGET: OnceLock<Result<KindSchema, String>> = OnceLock::new();
    let (cell, idx) = match kind {
        "ModelRoute" => (&ROUTE, 0),
        "ProviderBudget" => (&BUDGET, 1),
        _ => return None,
    };
    Some(cell.get_or_init(|| {
        let crd = super::crds().swap_remove(idx);
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or_else(|| format!("the {kind} CRD has no schema"))?;
        let schema = serde_json::to_value(schema).map_err(|e| e.to_string())?;
        let structural = jsonschema::draft4::options()
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| format!("the {kind} CRD schema does not compile: {e}"))?;
        let fields = Fields::of(&schema);
        Ok(KindSchema { schema, structural, fields })
    }))
}

/// `/spec/backends/0/weight` → `spec.backends[0].weight`.
fn json_pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() { "(object)".into() } else { out }
}

/// Null fields are absent fields (as for the API server's nullable handling).
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The fields a schema declares, taken from the schema once per kind: the walk over every
/// object then looks each field up once, not the schema's keywords at every level.
#[derive(Debug, Default)]
struct Fields {
    /// `x-kubernetes-preserve-unknown-fields: true`: anything goes from here down.
    preserve: bool,
    /// `properties`, when the schema declares them.
    properties: Option<std::collections::HashMap<String, Fields>>,
    /// `additionalProperties`, when it is a schema (the values of a map).
    additional: Option<Box<Fields>>,
    /// `items`.
    items: Option<Box<Fields>>,
}

impl Fields {
    fn of(schema: &Value) -> Fields {
        Fields {
            preserve: schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)),
            properties: schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|props| props.iter().map(|(k, v)| (k.clone(), Fields::of(v))).collect()),
            additional: schema.get("additionalProperties").filter(|a| a.is_object()).map(|a| Box::new(Fields::of(a))),
            items: schema.get("items").map(|i| Box::new(Fields::of(i))),
        }
    }
}

/// Fields the schema does not declare (what `kubectl apply` refuses with strict validation).
/// `path` is the field path so far (a buffer: restored on return, allocated only per error).
fn unknown_fields(schema: &Fields, value: &Value, path: &mut String, out: &mut Vec<FieldError>) {
    use std::fmt::Write as _;
    if schema.preserve {
        return;
    }
    let len = path.len();
    match value {
        Value::Object(m) => {
            let Some(props) = &schema.properties else {
                if let Some(ap) = &schema.additional {
                    for (k, v) in m {
                        path.push('.');
                        path.push_str(k);
                        unknown_fields(ap, v, path, out);
                        path.truncate(len);
                    }
                }
                return;
            };
            let lenient = path.is_empty() || path == "metadata";
            for (k, v) in m {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match props.get(k) {
                    Some(sub) => unknown_fields(sub, v, path, out),
                    None if lenient => {}
                    None => out.push(FieldError::new(path.clone(), "unknown field")),
                }
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            if let Some(items) = &schema.items {
                for (i, v) in a.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    unknown_fields(items, v, path, out);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `Kind namespace/name` for messages.
pub fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("(no kind)");
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("(no name)");
    let ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default");
    format!("{kind} {ns}/{name}")
}

/// Validates one object (a parsed manifest) as the API server would, then checks what the
/// schema cannot express. Returns `Ok(None)` for kinds that are not tollgate's.
pub fn validate_value(mut value: Value) -> Result<Option<Object>, Vec<FieldError>> {
    let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Err(vec![FieldError::new("kind", "missing")]);
    };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let Some(schema) = kind_schema(&kind) else {
        return Ok(None);
    };
    if api_version.split('/').next() != Some(super::GROUP) {
        // Another group's kind that happens to share the name.
        return Ok(None);
    }
    let expected = format!("{}/{}", super::GROUP, super::VERSION);
    if api_version != expected {
        return Err(vec![FieldError::new("apiVersion", format!("{api_version:?} is not served; use {expected}"))]);
    }
    let schema = schema.as_ref().map_err(|e| vec![FieldError::new("(schema)", e.clone())])?;

    let mut errors = first_checks(&mut value)?;

    // Fast path: a valid object is never defaulted as JSON (see the module comment).
    let mut unknown = Vec::new();
    unknown_fields(&schema.fields, &value, &mut String::new(), &mut unknown);
    let value = if unknown.is_empty() && errors.is_empty() && schema.structural.is_valid(&value) {
        value
    } else {
        let defaulted = defaulted_with_structure_errors(schema, &value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        defaulted
    };

    let object = match kind.as_str() {
        "ModelRoute" => serde_json::from_value::<ModelRoute>(value).map(|r| Object::ModelRoute(Box::new(r))),
        _ => serde_json::from_value::<ProviderBudget>(value).map(|b| Object::ProviderBudget(Box::new(b))),
    }
    .map_err(|e| vec![FieldError::new("(object)", e.to_string())])?;
    match &object {
        Object::ModelRoute(r) => super::rules::model_route(&r.spec, &mut errors),
        Object::ProviderBudget(b) => super::rules::provider_budget(&b.spec, &mut errors),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    semantic_errors(&object, &mut errors);
    if errors.is_empty() { Ok(Some(object)) } else { Err(errors) }
}

/// What every validation starts with: null fields dropped, then the metadata errors
/// ([`metadata_errors`]) to go on with, or those and `spec: required` to stop at when there is
/// no spec.
fn first_checks(value: &mut Value) -> Result<Vec<FieldError>, Vec<FieldError>> {
    drop_nulls(value);
    let mut errors = Vec::new();
    metadata_errors(value, &mut errors);
    if value.get("spec").is_none() {
        errors.push(FieldError::new("spec", "required"));
        return Err(errors);
    }
    Ok(errors)
}

/// `metadata.name` (required, an RFC 1123 subdomain) and `metadata.namespace` (a namespace name).
fn metadata_errors(value: &Value, errors: &mut Vec<FieldError>) {
    match value.pointer("/metadata/name").and_then(Value::as_str) {
        None => errors.push(FieldError::new("metadata.name", "required")),
        Some(n) if !is_dns_subdomain(n) => errors.push(FieldError::new(
            "metadata.name",
            format!("{n:?} must be a lowercase RFC 1123 subdomain (letters, digits, '-' and '.')"),
        )),
        Some(_) => {}
    }
    if let Some(ns) = value.pointer("/metadata/namespace") {
        match ns.as_str() {
            Some(n) if is_dns_subdomain(n) && !n.contains('.') && n.len() <= 63 => {}
            _ => errors.push(FieldError::new("metadata.namespace", format!("{ns} is not a valid namespace name"))),
        }
    }
}

/// The object with the schema's defaults applied, and its unknown fields and structural errors
/// (the API server's order: defaulting, then structure).
fn defaulted_with_structure_errors(schema: &KindSchema, value: &Value, errors: &mut Vec<FieldError>) -> Value {
    let defaulted = apply_defaults(&schema.schema, value);
    unknown_fields(&schema.fields, &defaulted, &mut String::new(), errors);
    for e in schema.structural.iter_errors(&defaulted) {
        errors.push(FieldError::new(json_pointer_to_field(e.instance_path().as_str()), structural_message(&e)));
    }
    defaulted
}

/// Longest value an error message repeats; a longer one is named `value`.
const MAX_ECHOED_VALUE: usize = 64;

/// A structural error's message. It repeats the offending value only when that is a short
/// scalar (`-30 is less than the minimum of 0`) holding no URL credentials; a list, an object,
/// a long text or a URL with `user:password@` is named `value` instead, so a 10,000-item list
/// is never copied into a message and a password never reaches a status or a log line.
fn structural_message(e: &jsonschema::ValidationError<'_>) -> String {
    let echo = match e.instance().as_ref() {
        Value::String(s) => s.len() <= MAX_ECHOED_VALUE && !super::rules::url_has_userinfo(s),
        Value::Array(_) | Value::Object(_) => false,
        _ => true,
    };
    if echo { e.to_string() } else { e.masked().to_string() }
}

/// What no OpenAPI schema or CEL rule can say.
fn semantic_errors(object: &Object, errors: &mut Vec<FieldError>) {
    if let Object::ProviderBudget(b) = object {
        let tz = &b.spec.window.time_zone;
        if jiff::tz::TimeZone::get(tz).is_err() {
            errors.push(FieldError::new("spec.window.timeZone", format!("{tz:?} is not a known IANA time zone")));
        }
    }
}

/// Largest manifest file (or text) read: 16 MiB ([`MAX_MANIFEST_FILE_BYTES`], one limit for
/// reading and parsing), about 12,000 routes of 5 backends. Any
/// number of documents fits under it; the YAML parser's own budgets are scaled to it.
pub const MAX_MANIFEST_BYTES: usize = MAX_MANIFEST_FILE_BYTES as usize;

/// One document of a manifest text, checked as soon as it is parsed.
enum Checked {
    /// A null document (nothing).
    Null,
    /// Not a mapping (`Kind namespace/name` as far as known).
    NotObject(String),
    /// An object (`Kind namespace/name`) and its validation.
    Object(String, Result<Option<Object>, Vec<FieldError>>),
}

/// The documents of one part of a text, each validated when the parser hands it over (in the
/// parser's thread), so the JSON of a document is dropped at once and never held for the whole
/// file.
#[derive(Default)]
struct CheckedDocuments(Vec<Checked>);

impl Extend<Value> for CheckedDocuments {
    fn extend<I: IntoIterator<Item = Value>>(&mut self, docs: I) {
        for doc in docs {
            self.0.push(if doc.is_null() {
                Checked::Null
            } else if doc.is_object() {
                Checked::Object(describe(&doc), validate_value(doc))
            } else {
                Checked::NotObject(describe(&doc))
            });
        }
    }
}

/// Parses a multi-document YAML text and validates every tollgate object in it. Any number of
/// documents; the text is bounded by [`MAX_MANIFEST_BYTES`].
pub fn parse_manifests(source_name: &str, text: &str, into: &mut Manifests) -> Result<(), Vec<ManifestError>> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(vec![ManifestError {
            source_name: source_name.into(),
            doc: 0,
            object: "(file)".into(),
            field: "(size)".into(),
            message: format!(
                "{} bytes is over the limit of {MAX_MANIFEST_BYTES} bytes for one manifest file: split it into several files",
                text.len()
            ),
        }]);
    }
    // Parsed on every core, each document validated in its part's thread as soon as it is
    // parsed; the parser's own budgets are scaled to the size bound above.
    let parts = super::yaml::parse_documents_into::<CheckedDocuments>(text).map_err(|message| {
        vec![ManifestError {
            source_name: source_name.into(),
            doc: 0,
            object: "(unparsed)".into(),
            field: "(yaml)".into(),
            message,
        }]
    })?;
    // Documents that are not mappings first, then invalid objects (each in document order).
    let mut errors = Vec::new();
    let mut invalid = Vec::new();
    for (i, checked) in parts.into_iter().flat_map(|p| p.0).enumerate() {
        let doc = i + 1;
        match checked {
            Checked::Null => {}
            Checked::NotObject(object) => errors.push(ManifestError {
                source_name: source_name.into(),
                doc,
                object,
                field: "(document)".into(),
                message: "expected a mapping (a Kubernetes object)".into(),
            }),
            Checked::Object(_, Ok(Some(Object::ModelRoute(r)))) => into.routes.push(*r),
            Checked::Object(_, Ok(Some(Object::ProviderBudget(b)))) => into.budgets.push(*b),
            Checked::Object(object, Ok(None)) => into.skipped.push(format!("{source_name}: document {doc}: {object}")),
            Checked::Object(object, Err(fields)) => invalid.extend(fields.into_iter().map(|f| ManifestError {
                source_name: source_name.into(),
                doc,
                object: object.clone(),
                field: f.field,
                message: f.message,
            })),
        }
    }
    errors.extend(invalid);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Below this many items [`parallel_map`] stays on the calling thread.
const PARALLEL_MIN_ITEMS: usize = 64;

/// `items.map(f)` on every core (scoped threads over contiguous chunks), results in input
/// order; on the calling thread for fewer than 64 items or one core. A panic in `f` is
/// propagated. Validation of many objects ([`parse_manifests`], the plan's admission) uses it.
pub fn parallel_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if threads < 2 || items.len() < PARALLEL_MIN_ITEMS {
        return items.into_iter().map(f).collect();
    }
    let per_chunk = items.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let chunk: Vec<T> = rest.by_ref().take(per_chunk).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            chunks.into_iter().map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// The largest manifest file read (16 MiB). A bigger `*.yaml` entry is an error naming the file,
/// never read into memory.
pub const MAX_MANIFEST_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What a manifest directory entry holds: its bytes, or why it cannot be read.
pub type ManifestFile = (PathBuf, Result<Vec<u8>, String>);

/// The `*.yaml` / `*.yml` entries of `dir` (not recursive) in name order, each with its bytes
/// or why it is refused. The one definition of "a manifest file", shared by [`load_dir`] and
/// `tollgate local`'s change detector:
/// - symlinks are followed; the target must be a regular file. A FIFO, socket, device or
///   directory is refused (never opened for reading: a FIFO would block, `/dev/zero` never
///   ends), and so is a file over [`MAX_MANIFEST_FILE_BYTES`];
/// - an entry that vanishes while listed, or a symlink to nothing (an editor's lock file such as
///   Emacs' `.#routes.yaml`), is not a manifest and is skipped;
/// - the file is opened non-blocking and checked again on the open handle, so a file swapped
///   for a FIFO between the two checks cannot block the reader, and at most the limit plus one
///   byte is read even if it grows meanwhile.
///
/// Fails only when `dir` itself cannot be listed.
pub fn read_manifest_files(dir: &Path) -> std::io::Result<Vec<ManifestFile>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .filter_map(|path| match read_regular_file(&path) {
            Ok(None) => None,
            Ok(Some(bytes)) => Some((path, Ok(bytes))),
            Err(e) => Some((path, Err(e))),
        })
        .collect())
}

/// What kind of non-regular file `t` is, for messages (manifest directories and `local`'s
/// state file).
pub(crate) fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Refuses anything but a regular file within the size limit.
fn check_regular(meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err(format!(
            "is {} (after following symlinks); only regular files are read as manifests",
            file_kind(meta.file_type())
        ));
    }
    if meta.len() > MAX_MANIFEST_FILE_BYTES {
        return Err(format!(
            "is {} bytes, over the limit of {} bytes (16 MiB) per manifest file",
            meta.len(),
            MAX_MANIFEST_FILE_BYTES
        ));
    }
    Ok(())
}

/// Reads one manifest file under the rules of [`read_manifest_files`]; `None` when it is gone.
fn read_regular_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    check_regular(&meta)?;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    check_regular(&meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_MANIFEST_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_MANIFEST_FILE_BYTES {
        return Err(format!("grew over the limit of {MAX_MANIFEST_FILE_BYTES} bytes (16 MiB) per manifest file"));
    }
    Ok(Some(bytes))
}

/// Reads and validates every manifest file of `dir` ([`read_manifest_files`]: `*.yaml` /
/// `*.yml`, regular files only, at most [`MAX_MANIFEST_FILE_BYTES`] each, not recursive, in
/// name order). All errors are collected; duplicates of the same kind, namespace and name are
/// refused.
pub fn load_dir(dir: &Path) -> Result<Manifests, Vec<ManifestError>> {
    let file_err = |p: &Path, message: String| ManifestError {
        source_name: p.display().to_string(),
        doc: 0,
        object: "(file)".into(),
        field: "(file)".into(),
        message,
    };
    let files = read_manifest_files(dir).map_err(|e| vec![file_err(dir, e.to_string())])?;
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for (file, content) in &files {
        match content.as_ref().map(|b| std::str::from_utf8(b)) {
            Ok(Ok(text)) => {
                if let Err(e) = parse_manifests(&file.display().to_string(), text, &mut manifests) {
                    errors.extend(e);
                }
            }
            Ok(Err(e)) => errors.push(file_err(file, format!("not UTF-8 text: {e}"))),
            Err(e) => errors.push(file_err(file, e.clone())),
        }
    }
    let mut seen = BTreeSet::new();
    let keys = manifests
        .routes
        .iter()
        .map(|r| ("ModelRoute", crate::policy::ObjectKey::of(r)))
        .chain(manifests.budgets.iter().map(|b| ("ProviderBudget", crate::policy::ObjectKey::of(b))));
    for (kind, key) in keys {
        if !seen.insert((kind, key.clone())) {
            errors.push(ManifestError {
                source_name: dir.display().to_string(),
                doc: 0,
                object: format!("{kind} {key}"),
                field: "metadata.name".into(),
                message: "defined more than once".into(),
            });
        }
    }
    if files.is_empty() && errors.is_empty() {
        errors.push(ManifestError {
            source_name: dir.display().to_string(),
            doc: 0,
            object: "(directory)".into(),
            field: "(files)".into(),
            message: "no *.yaml or *.yml files".into(),
        });
    }
    if errors.is_empty() { Ok(manifests) } else { Err(errors) }
}

#[cfg(test)]
#[path = "validate_oracle_tests.rs"]
mod oracle_tests;
