//! Flamingo model components; built in the model issue on top of `flamingo-engine`.
