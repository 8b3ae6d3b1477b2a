//! Tool namespaces rendered as TypeScript-like declarations, with JSON schema → TS type conversion
//! written to produce exactly openai-harmony's text (comments, `?` for optional, `oneOf` unions).

use std::collections::BTreeMap;

use serde_json::Value;

use super::ToolNamespace;

/// `# Tools` followed by one `## namespace` section per namespace (spec §4.3).
pub(crate) fn tools_section(tools: &BTreeMap<String, ToolNamespace>) -> String {
    let mut sections = vec!["# Tools".to_string()];
    for ns in tools.values() {
        let mut lines = vec![format!("## {}\n", ns.name)];
        for line in ns.description.iter().flat_map(|d| d.lines()) {
            lines.push(if ns.tools.is_empty() {
                line.to_string()
            } else {
                format!("// {line}")
            });
        }
        if !ns.tools.is_empty() {
            lines.push(format!("namespace {} {{\n", ns.name));
            for tool in &ns.tools {
                lines.extend(tool.description.lines().map(|l| format!("// {l}")));
                match &tool.parameters {
                    Some(params) => lines.push(format!(
                        "type {} = (_: {}) => any;\n",
                        tool.name,
                        to_typescript(params, "")
                    )),
                    None => lines.push(format!("type {} = () => any;\n", tool.name)),
                }
            }
            lines.push(format!("}} // namespace {}", ns.name));
        }
        sections.push(lines.join("\n"));
    }
    sections.join("\n\n")
}

fn is_enum(schema: &Value) -> bool {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn is_nullable(schema: &Value) -> bool {
    schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Appends `| null` for a nullable schema unless the type already mentions null.
fn with_null(schema: &Value, ty: String) -> String {
    if is_nullable(schema) && !ty.contains("null") {
        format!("{ty} | null")
    } else {
        ty
    }
}

/// A `default` as a comment: quoted for plain strings, bare for enum strings, JSON otherwise.
fn default_comment(schema: &Value, default: &Value) -> String {
    match default.as_str() {
        Some(s) if !is_enum(schema) => format!("default: \"{s}\""),
        Some(s) => format!("default: {s}"),
        None => format!("default: {default}"),
    }
}

/// The TypeScript type of a JSON schema; `indent` prefixes the lines of nested objects.
pub(crate) fn to_typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        return one_of_inline(variants, indent);
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let names: Vec<&str> = types
            .iter()
            .filter_map(Value::as_str)
            .map(|t| if t == "integer" { "number" } else { t })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => object(schema, indent),
        Some("string") => {
            let values: Vec<String> = schema
                .get("enum")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| format!("\"{s}\""))
                        .collect()
                })
                .unwrap_or_default();
            if values.is_empty() {
                "string".to_string()
            } else {
                values.join(" | ")
            }
        }
        Some("number" | "integer") => "number".to_string(),
        Some("boolean") => "boolean".to_string(),
        Some("array") => match schema.get("items") {
            Some(items) => format!("{}[]", to_typescript(items, indent)),
            None => "Array<any>".to_string(),
        },
        _ => "any".to_string(),
    }
}

/// A top-level `oneOf`: each variant on its own ` | ` line with trailing description/default comments.
fn one_of_inline(variants: &[Value], indent: &str) -> String {
    let mut out = String::new();
    for variant in variants {
        out.push_str(&format!("\n{indent} | "));
        out.push_str(&with_null(
            variant,
            to_typescript(variant, &format!("{indent}   ")),
        ));
        let mut comments = Vec::new();
        if let Some(d) = variant.get("description").and_then(Value::as_str) {
            comments.push(d.to_string());
        }
        if let Some(default) = variant.get("default") {
            comments.push(default_comment(variant, default));
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
    }
    out
}

/// An object type: one line per property, with title/description/examples comments above it.
fn object(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{indent}// {d}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (key, prop) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let optional = if required.contains(&key.as_str()) {
            ""
        } else {
            "?"
        };
        property_comments(prop, indent, &mut out);
        if let Some(variants) = prop.get("oneOf").and_then(Value::as_array) {
            one_of_property(
                prop,
                variants,
                &format!("{indent}{key}{optional}"),
                indent,
                &mut out,
            );
            continue;
        }
        out.push_str(&format!("{indent}{key}{optional}: "));
        out.push_str(&with_null(
            prop,
            to_typescript(prop, &format!("{indent}    ")),
        ));
        out.push(',');
        if let Some(default) = prop.get("default") {
            out.push_str(&format!(" // {}", default_comment(prop, default)));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent}}}"));
    out
}

/// Title, description (unless the property is a `oneOf`) and examples of a property.
fn property_comments(prop: &Value, indent: &str, out: &mut String) {
    if let Some(title) = prop.get("title").and_then(Value::as_str) {
        out.push_str(&format!("{indent}// {title}\n{indent}//\n"));
    }
    if prop.get("oneOf").is_none() {
        if let Some(d) = prop.get("description").and_then(Value::as_str) {
            out.push_str(&format!("{indent}// {d}\n"));
        }
    }
    if let Some(examples) = prop
        .get("examples")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        out.push_str(&format!("{indent}// Examples:\n"));
        for ex in examples.iter().filter_map(Value::as_str) {
            out.push_str(&format!("{indent}// - \"{ex}\"\n"));
        }
    }
}

/// A `oneOf` property: its description and default above `name:`, then one ` | variant` line each.
fn one_of_property(prop: &Value, variants: &[Value], head: &str, indent: &str, out: &mut String) {
    let prop_desc = prop.get("description").and_then(Value::as_str);
    let first_desc = variants
        .first()
        .and_then(|v| v.get("description"))
        .and_then(Value::as_str);
    let desc_above = prop_desc.filter(|d| Some(*d) != first_desc);
    if let Some(d) = desc_above {
        out.push_str(&format!("{indent}// {d}\n"));
    }
    if let Some(default) = prop.get("default") {
        out.push_str(&format!("{indent}// {}\n", default_comment(prop, default)));
    }
    out.push_str(&format!("{head}:\n"));
    for (i, variant) in variants.iter().enumerate() {
        out.push_str(&format!("{indent} | "));
        out.push_str(&with_null(
            variant,
            to_typescript(variant, &format!("{indent}   ")),
        ));
        let mut comments = Vec::new();
        let skip_desc = i == 0 && desc_above.is_some();
        if let Some(d) = variant
            .get("description")
            .and_then(Value::as_str)
            .filter(|d| !skip_desc && Some(*d) != prop_desc)
        {
            comments.push(d.to_string());
        }
        if let Some(default) = variant.get("default") {
            comments.push(default_comment(variant, default));
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent},\n"));
}
