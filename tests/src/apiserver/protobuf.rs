//! Just enough of Kubernetes' protobuf encoding to read the one request body typed clients
//! send only that way: `kubectl create token` (client-go's typed clientset) POSTs its
//! TokenRequest as `application/vnd.kubernetes.protobuf`. Answers stay JSON, which the same
//! clients accept.
//!
//! The envelope is the magic `k8s\0` then a `runtime.Unknown` message whose field 2 holds the
//! object's own encoding (generated.proto of each API group gives the field numbers).

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// One decoded field: number and payload (varints as numbers, length-delimited as bytes).
#[derive(Debug, PartialEq)]
pub enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint longer than 64 bits".into())
}

/// The fields of one message, in order.
pub fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let number = u32::try_from(tag >> 3).map_err(|_| "field number too large")?;
        match tag & 7 {
            0 => out.push(Field::Varint(number, varint(buf, &mut pos)?)),
            2 => {
                let len =
                    usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length too large")?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push(Field::Bytes(number, &buf[pos..end]));
                pos = end;
            }
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?
            }
            5 => {
                pos = pos
                    .checked_add(4)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?
            }
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    Ok(out)
}

/// The object's own bytes inside the `k8s\0` + runtime.Unknown envelope.
pub fn unwrap_envelope(body: &[u8]) -> Result<&[u8], String> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body must start with the k8s\\0 magic")?;
    fields(inner)?
        .into_iter()
        .find_map(|f| match f {
            Field::Bytes(2, raw) => Some(raw),
            _ => None,
        })
        .ok_or_else(|| "the protobuf envelope has no raw object".to_string())
}

/// A protobuf TokenRequest as the JSON the rest of the emulator reads: `spec.audiences`
/// (TokenRequestSpec field 1), `spec.expirationSeconds` (field 4) and `spec.boundObjectRef`
/// (field 3).
pub fn token_request_json(body: &[u8]) -> Result<serde_json::Value, String> {
    let mut spec = serde_json::Map::new();
    for f in fields(unwrap_envelope(body)?)? {
        let Field::Bytes(2, raw) = f else { continue };
        let mut audiences = Vec::new();
        for s in fields(raw)? {
            match s {
                Field::Bytes(1, a) => audiences.push(serde_json::Value::String(
                    String::from_utf8(a.to_vec()).map_err(|_| "audience is not UTF-8")?,
                )),
                Field::Varint(4, secs) => {
                    spec.insert("expirationSeconds".into(), serde_json::json!(secs as i64));
                }
                Field::Bytes(3, r) => {
                    spec.insert("boundObjectRef".into(), bound_object_ref(r)?);
                }
                _ => {}
            }
        }
        if !audiences.is_empty() {
            spec.insert("audiences".into(), serde_json::Value::Array(audiences));
        }
    }
    Ok(serde_json::json!({"spec": spec}))
}

/// BoundObjectReference: kind 1, apiVersion 2, name 3, uid 4.
fn bound_object_ref(buf: &[u8]) -> Result<serde_json::Value, String> {
    let mut out = serde_json::Map::new();
    for f in fields(buf)? {
        if let Field::Bytes(n @ 1..=4, v) = f {
            let key = ["kind", "apiVersion", "name", "uid"][n as usize - 1];
            let text = String::from_utf8(v.to_vec())
                .map_err(|_| format!("boundObjectRef.{key} is not UTF-8"))?;
            out.insert(key.into(), serde_json::Value::String(text));
        }
    }
    Ok(serde_json::Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_token_request_like_client_gos() {
        // spec { audiences: "api", expirationSeconds: 3600 } inside runtime.Unknown.
        let spec = [&[0x0a, 3][..], b"api", &[0x20, 0x90, 0x1c]].concat();
        let obj = [&[0x12, spec.len() as u8][..], &spec].concat();
        let typemeta = [&[0x0a, 2][..], b"v1"].concat();
        let unknown = [
            &[0x0a, typemeta.len() as u8][..],
            &typemeta,
            &[0x12, obj.len() as u8],
            &obj,
        ]
        .concat();
        let body = [MAGIC, &unknown].concat();
        let v = token_request_json(&body).unwrap();
        assert_eq!(v["spec"]["audiences"][0], "api");
        assert_eq!(v["spec"]["expirationSeconds"], 3600);
        assert!(token_request_json(b"{}").is_err());
        assert!(fields(&[0x0a, 9, 1]).is_err(), "truncated");
    }
}
