//! The LLM engine.
