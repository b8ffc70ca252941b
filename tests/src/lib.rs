pub mod agent;
pub mod command;
pub mod containerd;
pub mod netns;
