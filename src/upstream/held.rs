//! What a pooled server holds for rlsgate beyond its connection: the prepared
//! statements it has under their server-side names (transaction mode), and the shape
//! each was prepared with.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

/// Prepared statements kept per server before the least recently used is closed.
pub const SERVER_CACHE_SIZE: usize = 512;

/// What a prepared statement takes and gives, as its Describe tells: the parameter
/// types, and the result columns (name, type, size, modifier; nothing when it returns
/// no rows). PostgreSQL keeps both for a statement's life: its parameter types never
/// change, and a result that DDL changed fails with 0A000.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub params: Vec<u32>,
    /// The columns, in the proxy's own compact form (`None`: NoData).
    pub columns: Option<Vec<u8>>,
}

impl Shape {
    /// From a ParameterDescription body and a RowDescription or NoData message (whole).
    /// The columns' source table and position are left out: PostgreSQL compares a
    /// statement's result by names and types, not by where the columns come from.
    pub fn from_describe(params: &[u8], result: &[u8]) -> Option<Shape> {
        let n = u16::from_be_bytes([*params.first()?, *params.get(1)?]) as usize;
        let params = params
            .get(2..2 + 4 * n)?
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if result.first() != Some(&b'T') {
            return Some(Shape {
                params,
                columns: None,
            });
        }
        let body = result.get(5..)?;
        let fields = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
        let mut columns = Vec::with_capacity(body.len());
        let mut pos = 2;
        for _ in 0..fields {
            let nul = body.get(pos..)?.iter().position(|b| *b == 0)?;
            columns.extend_from_slice(&body[pos..=pos + nul]);
            pos += nul + 1;
            // table oid (4), attnum (2): left out; type oid (4), size (2), modifier (4).
            columns.extend_from_slice(body.get(pos + 6..pos + 16)?);
            pos += 18;
        }
        Some(Shape {
            params,
            columns: Some(columns),
        })
    }
}

/// What a server holds under one statement name.
#[derive(Debug, Clone)]
pub enum Held {
    /// Parsed in the current transaction from the client statement with this id; its
    /// Describe has not been answered yet.
    Pending(u64),
    /// Prepared with this shape.
    Known(Arc<Shape>),
}

/// What one server has prepared (server names), least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    lru: LruCache<String, Held>,
    /// The server may hold statements not listed (after a `DEALLOCATE ALL`/`DISCARD
    /// ALL` that may have failed): every Parse of the proxy's is preceded by a Close.
    uncertain: bool,
}

impl Default for ServerStatements {
    fn default() -> Self {
        Self {
            lru: LruCache::new(NonZeroUsize::new(SERVER_CACHE_SIZE).expect("non-zero")),
            uncertain: false,
        }
    }
}

impl ServerStatements {
    /// True if prepared here (and marks it recently used).
    pub fn has(&mut self, name: &str) -> bool {
        self.lru.get(name).is_some()
    }

    /// What the server holds under `name` (and marks it recently used).
    pub fn get(&mut self, name: &str) -> Option<&Held> {
        self.lru.get(name)
    }

    /// Records a statement (or what it now holds); returns the one evicted to make
    /// room, to be closed.
    pub fn add(&mut self, name: &str, held: Held) -> Option<String> {
        self.lru
            .push(name.to_owned(), held)
            .and_then(|(k, _)| (k != name).then_some(k))
    }

    /// What the server now holds under `name`, if it holds it.
    pub fn replace(&mut self, name: &str, held: Held) {
        if let Some(h) = self.lru.peek_mut(name) {
            *h = held;
        }
    }

    /// The Describe of a statement parsed from client statement `id` was answered.
    pub fn described(&mut self, name: &str, id: u64, shape: &Arc<Shape>) {
        if let Some(held) = self.lru.peek_mut(name) {
            if matches!(held, Held::Pending(p) if *p == id) {
                *held = Held::Known(shape.clone());
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.lru.pop(name);
    }

    /// The server is known to hold none (a reset that dropped them all).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.uncertain = false;
    }

    /// The server may or may not hold any of them any more.
    pub fn forget_all(&mut self) {
        self.lru.clear();
        self.uncertain = true;
    }

    /// How many statements it is known to hold.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    pub fn uncertain(&self) -> bool {
        self.uncertain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lru_evicts_oldest() {
        let mut s = ServerStatements {
            lru: LruCache::new(NonZeroUsize::new(2).unwrap()),
            uncertain: false,
        };
        assert_eq!(s.add("a", Held::Pending(1)), None);
        assert_eq!(s.add("b", Held::Pending(2)), None);
        assert!(s.has("a"));
        assert_eq!(s.add("c", Held::Pending(3)), Some("b".into()));
        // Replacing what a name holds evicts nothing.
        assert_eq!(s.add("c", Held::Pending(4)), None);
    }

    #[test]
    fn shape_keeps_names_and_types_not_sources() {
        let mut params = vec![0, 2];
        params.extend_from_slice(&23u32.to_be_bytes());
        params.extend_from_slice(&25u32.to_be_bytes());
        let row = |table: u32, ty: u32| {
            let mut body = vec![0, 1];
            body.extend_from_slice(b"v\0");
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&2u16.to_be_bytes());
            body.extend_from_slice(&ty.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&0u16.to_be_bytes());
            let mut msg = vec![b'T'];
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(&body);
            msg
        };
        let a = Shape::from_describe(&params, &row(1000, 23)).unwrap();
        assert_eq!(a.params, vec![23, 25]);
        assert_eq!(a, Shape::from_describe(&params, &row(2000, 23)).unwrap());
        assert_ne!(a, Shape::from_describe(&params, &row(1000, 25)).unwrap());
        let none = Shape::from_describe(&params, b"n\0\0\0\x04").unwrap();
        assert_eq!(none.columns, None);
        assert!(Shape::from_describe(&[0, 3, 0], b"n").is_none());
        assert!(Shape::from_describe(&params, &row(1, 23)[..12]).is_none());
    }
}
