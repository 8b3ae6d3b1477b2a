//! GGUF metadata values (spec §3.1): the thirteen value types, with lenient numeric accessors so a
//! key written as u32 by one converter and u64 or i32 by another reads the same. Arrays keep their
//! elements in a vector of the element type ([`Array`]), so a file's array costs about its own size in
//! memory (a `Vec<Value>` would cost 32 bytes per u8 element).

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7 (one byte, 0 or 1).
    Bool(bool),
    /// Type 8 (u64 length + UTF-8 bytes, no NUL).
    String(String),
    /// Type 9: elements, all of one type.
    Array(Array),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The GGUF value-type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// A name of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (either float width, or any integer).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array value of element type `elem`; `None` when an element is of another type.
    pub fn array(elem: u32, items: Vec<Value>) -> Option<Value> {
        Array::from_values(elem, items).map(Value::Array)
    }
}

/// The elements of a type-9 array, stored by element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// u8 elements.
    U8(Vec<u8>),
    /// i8 elements.
    I8(Vec<i8>),
    /// u16 elements.
    U16(Vec<u16>),
    /// i16 elements.
    I16(Vec<i16>),
    /// u32 elements.
    U32(Vec<u32>),
    /// i32 elements.
    I32(Vec<i32>),
    /// f32 elements.
    F32(Vec<f32>),
    /// bool elements.
    Bool(Vec<bool>),
    /// string elements.
    String(Vec<String>),
    /// Nested arrays (each with its own element type).
    Array(Vec<Array>),
    /// u64 elements.
    U64(Vec<u64>),
    /// i64 elements.
    I64(Vec<i64>),
    /// f64 elements.
    F64(Vec<f64>),
}

impl Array {
    /// The GGUF value-type id of the elements.
    pub fn elem_type(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a value (a copy).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// Every element as a value, in order (each a copy).
    pub fn values(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The string elements, if the elements are strings.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// Builds an array of element type `elem` from values; `None` when an element is of another type
    /// (or `elem` is not a type id).
    pub fn from_values(elem: u32, items: Vec<Value>) -> Option<Array> {
        fn all<T>(items: Vec<Value>, f: impl Fn(Value) -> Option<T>) -> Option<Vec<T>> {
            items.into_iter().map(f).collect()
        }
        Some(match elem {
            0 => Array::U8(all(items, |v| {
                if let Value::U8(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            1 => Array::I8(all(items, |v| {
                if let Value::I8(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            2 => Array::U16(all(items, |v| {
                if let Value::U16(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            3 => Array::I16(all(items, |v| {
                if let Value::I16(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            4 => Array::U32(all(items, |v| {
                if let Value::U32(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            5 => Array::I32(all(items, |v| {
                if let Value::I32(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            6 => Array::F32(all(items, |v| {
                if let Value::F32(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            7 => Array::Bool(all(items, |v| {
                if let Value::Bool(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            8 => Array::String(all(items, |v| {
                if let Value::String(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            9 => Array::Array(all(items, |v| {
                if let Value::Array(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            10 => Array::U64(all(items, |v| {
                if let Value::U64(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            11 => Array::I64(all(items, |v| {
                if let Value::I64(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            12 => Array::F64(all(items, |v| {
                if let Value::F64(x) = v {
                    Some(x)
                } else {
                    None
                }
            })?),
            _ => return None,
        })
    }
}

/// ggml's name of a GGUF value-type id.
pub fn type_name(id: u32) -> &'static str {
    match id {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}
