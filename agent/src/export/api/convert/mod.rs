//! The one place where the model and the wire types (`herdwatch-proto`) meet: `From<&model>`
//! for everything the agent sends, `TryFrom<wire>` for the findings the CLI reads back. The
//! model, pipeline and detectors never name a wire type.
mod finding;
mod views;

pub use finding::finding_kind;

#[cfg(test)]
mod tests;
