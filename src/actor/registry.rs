//! Actor types by name, so a worker can spawn what the controller asks for.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::cell::{panic_message, Ready, Startable};
use super::traits::Spawn;
use crate::reason::SpawnRefusal;
use crate::wire::codec;

/// Makes an actor of one type from encoded parameters.
type Constructor = fn(&[u8]) -> Result<Box<dyn Startable>, SpawnRefusal>;

/// Two actor types were registered under the same [`Actor::NAME`](crate::Actor::NAME).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("two actor types are registered as {name:?}: actor type names must be unique")]
pub struct DuplicateActorType {
    /// The name both types use.
    pub name: &'static str,
}

/// The actor types a process can spawn on request, by [`Actor::NAME`](crate::Actor::NAME).
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<&'static str, Constructor>,
}

/// Makes an `A` from encoded parameters; a panic in decoding or in the
/// constructor refuses the spawn like an error would.
fn construct<A: Spawn>(params: &[u8]) -> Result<Box<dyn Startable>, SpawnRefusal> {
    let actor_type = A::NAME.to_string();
    let params: A::Params = match catch_unwind(|| codec::decode(params)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return Err(SpawnRefusal::BadParams {
                actor_type,
                detail: e.to_string(),
            })
        }
        Err(p) => {
            return Err(SpawnRefusal::ParamsPanicked {
                actor_type,
                detail: panic_message(&*p),
            })
        }
    };
    make::<A>(params)
}

/// Makes an `A` from its parameters, catching a panicking constructor.
pub(crate) fn make<A: Spawn>(params: A::Params) -> Result<Box<dyn Startable>, SpawnRefusal> {
    match catch_unwind(AssertUnwindSafe(|| A::new(params))) {
        Ok(Ok(actor)) => Ok(Box::new(Ready(actor))),
        Ok(Err(e)) => Err(SpawnRefusal::ConstructorFailed {
            actor_type: A::NAME.to_string(),
            detail: format!("{e:#}"),
        }),
        Err(p) => Err(SpawnRefusal::ConstructorPanicked {
            actor_type: A::NAME.to_string(),
            detail: panic_message(&*p),
        }),
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds actor type `A` under [`Actor::NAME`](crate::Actor::NAME).
    ///
    /// Errors: [`DuplicateActorType`] if another type is registered under
    /// that name (a remote spawn by name would otherwise get either).
    pub fn register<A: Spawn>(&mut self) -> Result<&mut Self, DuplicateActorType> {
        if self.types.contains_key(A::NAME) {
            return Err(DuplicateActorType { name: A::NAME });
        }
        self.types.insert(A::NAME, construct::<A>);
        Ok(self)
    }

    /// Adds actor type `A` (builder form); errors as [`Registry::register`].
    pub fn with<A: Spawn>(mut self) -> Result<Self, DuplicateActorType> {
        self.register::<A>()?;
        Ok(self)
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    /// Makes an actor of the type registered as `actor_type` from encoded parameters.
    ///
    /// Errors: unknown type, parameters that do not decode (or panic while
    /// decoding), or the constructor's error or panic.
    pub(crate) fn construct(
        &self,
        actor_type: &str,
        params: &[u8],
    ) -> Result<Box<dyn Startable>, SpawnRefusal> {
        match self.types.get(actor_type) {
            Some(construct) => construct(params),
            None => Err(SpawnRefusal::UnknownType {
                actor_type: actor_type.to_string(),
                registered: self.names().into_iter().map(String::from).collect(),
            }),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.types.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::{Actor, Context};

    #[derive(Default)]
    struct One;
    #[derive(Default)]
    struct Two;

    impl Actor for One {
        const NAME: &'static str = "same";
        type Message = ();
        async fn handle(&mut self, _: (), _: &Context) -> anyhow::Result<()> {
            Ok(())
        }
    }

    impl Actor for Two {
        const NAME: &'static str = "same";
        type Message = ();
        async fn handle(&mut self, _: (), _: &Context) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn duplicate_names_are_refused_and_unknown_types_named() {
        let registry = Registry::new().with::<One>().expect("first");
        let err = registry.clone().with::<Two>().expect_err("second refused");
        assert_eq!(err, DuplicateActorType { name: "same" });
        assert!(err.to_string().contains("\"same\""));
        let refused = registry.construct("other", &[]).err().expect("unknown");
        assert!(
            refused
                .to_string()
                .contains("unknown actor type \"other\" (registered: same)"),
            "{refused}"
        );
    }
}
