//! Namespaces: per-family topic options, resolved once per topic.
//!
//! A topic `NAME:rest` belongs to namespace `NAME`; a topic without a colon belongs to the
//! default namespace. Namespaces are configured in the TOML file as `[namespaces.NAME]`
//! (the default namespace's options are top-level keys: `anonymous`, `client_publish`),
//! and a topic naming a namespace that is not configured is refused as `bad_topic`.
//!
//! Options are resolved when a shard interns a topic ([`crate::pubsub::topic::Topics`]) and
//! kept in its [`TopicOptions`](super::TopicOptions), so delivery never looks a namespace up; a command that names
//! a topic (mux publish, HTTP publish, a subscribe) pays one hash lookup of the namespace
//! part of the name, once per command.
//!
//! Adding an option is one field in [`NamespaceOptions`] (and its line in the config file
//! parser, `config::NamespaceConfig`).

use std::collections::HashMap;

use super::topic::TopicError;

/// What a connection without a token may do in a namespace (only meaningful when a JWT key
/// is configured: without one, nobody presents a token and everything is allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Anonymous {
    /// Nothing: a token is needed (`401` at the upgrade, `unauthorized` in mux mode).
    #[default]
    None,
    /// Subscribe, not publish.
    Subscribe,
    /// Subscribe and publish (what everyone may do without any key configured).
    Publish,
}

impl Anonymous {
    /// The names used in the configuration.
    pub const CHOICES: &'static [(&'static str, Self)] = &[
        ("none", Self::None),
        ("subscribe", Self::Subscribe),
        ("publish", Self::Publish),
    ];

    /// Whether this grants subscribing.
    pub fn may_subscribe(self) -> bool {
        self >= Anonymous::Subscribe
    }

    /// Whether this grants publishing.
    pub fn may_publish(self) -> bool {
        self == Anonymous::Publish
    }
}

impl std::fmt::Display for Anonymous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Self::CHOICES
            .iter()
            .find(|(_, v)| v == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// A namespace's options, as the shards use them (copied into each topic at interning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// What connections without a token may do.
    pub anonymous: Anonymous,
    /// Whether clients (WebSocket connections) may publish; `false`: only the backend API.
    pub client_publish: bool,
    /// Largest message a client may publish here (at most the server's
    /// `--max-message-size`, which the frame decoder enforces for everything).
    pub max_message_size: usize,
    /// Publications kept per topic (`history_size`); 0: no history, no visible offsets.
    pub history_size: u32,
    /// A topic's history (and epoch) is forgotten this long after its last publication
    /// (`history_ttl`); never zero when `history_size` is not.
    pub history_ttl: std::time::Duration,
}

impl NamespaceOptions {
    /// The options of a server without access control: everyone may do everything.
    pub fn open(max_message_size: usize) -> Self {
        NamespaceOptions {
            anonymous: Anonymous::Publish,
            client_publish: true,
            max_message_size,
            history_size: 0,
            history_ttl: std::time::Duration::ZERO,
        }
    }
}

/// Index of a namespace in [`Namespaces`] (0 is the default namespace).
pub type NamespaceId = u16;

/// The longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// The namespace table, built once from the configuration and shared by every shard.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Index 0: the default namespace; then the named ones.
    options: Vec<NamespaceOptions>,
    names: Vec<Box<str>>,
    by_name: HashMap<Box<str>, NamespaceId>,
}

impl Namespaces {
    /// A table with only the default namespace.
    pub fn new(default: NamespaceOptions) -> Self {
        Namespaces {
            options: vec![default],
            names: vec!["".into()],
            by_name: HashMap::new(),
        }
    }

    /// Adds namespace `name`. Err: the name is not valid ([`valid_name`]), or is there already.
    pub fn add(&mut self, name: &str, options: NamespaceOptions) -> Result<NamespaceId, String> {
        valid_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(format!("namespace {name:?} is defined twice"));
        }
        let id = NamespaceId::try_from(self.options.len())
            .map_err(|_| "too many namespaces (at most 65535)".to_owned())?;
        self.options.push(options);
        self.names.push(name.into());
        self.by_name.insert(name.into(), id);
        Ok(id)
    }

    /// The namespace a topic belongs to: the part before its first `:` names it; no colon,
    /// the default namespace. A name that is not configured is `UnknownNamespace`.
    pub fn resolve(&self, topic: &str) -> Result<NamespaceId, TopicError> {
        match topic.split_once(':') {
            None => Ok(0),
            Some((ns, _)) => self
                .by_name
                .get(ns)
                .copied()
                .ok_or(TopicError::UnknownNamespace),
        }
    }

    /// The options of a namespace.
    pub fn options(&self, id: NamespaceId) -> NamespaceOptions {
        self.options
            .get(usize::from(id))
            .copied()
            .unwrap_or(self.options[0])
    }

    /// A namespace's name (`""` for the default one).
    pub fn name(&self, id: NamespaceId) -> &str {
        self.names.get(usize::from(id)).map_or("", |n| n)
    }

    /// Whether any namespace lets connections without a token do anything.
    pub fn any_anonymous(&self) -> bool {
        self.options.iter().any(|o| o.anonymous != Anonymous::None)
    }
}

/// A namespace name: 1 to [`MAX_NAMESPACE_LEN`] bytes of `A-Z a-z 0-9 _ - .`.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAMESPACE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace name {name:?} must be 1 to {MAX_NAMESPACE_LEN} characters of A-Z, a-z, 0-9, _, - and ."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_by_the_part_before_the_first_colon() {
        let mut ns = Namespaces::new(NamespaceOptions::open(1024));
        let chat = NamespaceOptions {
            anonymous: Anonymous::Subscribe,
            client_publish: false,
            max_message_size: 10,
            history_size: 0,
            history_ttl: std::time::Duration::ZERO,
        };
        let id = ns.add("chat", chat).unwrap();
        assert_eq!(ns.resolve("prices"), Ok(0));
        assert_eq!(ns.resolve("chat:room:1"), Ok(id));
        assert_eq!(ns.options(id), chat);
        assert_eq!(ns.resolve("chatx:1"), Err(TopicError::UnknownNamespace));
        assert_eq!(ns.resolve(":x"), Err(TopicError::UnknownNamespace));
        assert!(ns.add("chat", chat).is_err());
        assert!(ns.add("a:b", chat).is_err());
        assert!(ns.add("", chat).is_err());
        assert!(ns.any_anonymous());
    }

    #[test]
    fn anonymous_grants_are_ordered() {
        assert!(!Anonymous::None.may_subscribe());
        assert!(Anonymous::Subscribe.may_subscribe());
        assert!(!Anonymous::Subscribe.may_publish());
        assert!(Anonymous::Publish.may_publish());
    }
}
