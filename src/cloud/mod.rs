//! The EC2 control plane (feature `cloud`): a blocking EC2 handle whose SDK runs on its own thread
//! ([`ec2`]), AMI baking ([`bake`], `autopaxos ami bake`), and launching, listing and terminating a
//! cluster by tags plus tag discovery for `autopaxos boot` ([`cluster`], `autopaxos cloud`), and
//! running an emulator's instances as local processes ([`emulate`], `autopaxos cloud emulate`).

pub mod bake;
pub mod cluster;
pub mod ec2;
pub mod emulate;

use crate::duration::parse_duration;
use clap::Args;
use std::time::Duration;

/// Where to reach EC2; shared by every cloud command. Unset: the standard AWS environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, the credential chain).
#[derive(Args, Debug, Clone, Default)]
pub struct AwsFlags {
    /// AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / the profile's).
    #[arg(long)]
    pub region: Option<String>,
    /// EC2 endpoint URL, e.g. a local emulator (default: AWS_ENDPOINT_URL, else the region's endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Bound on each EC2 API call, retries included.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub call_timeout: Duration,
}

impl AwsFlags {
    /// The options for [`ec2::Ec2::connect`]; `region` fills in when no --region was given.
    pub fn options(&self, region: Option<&str>) -> ec2::Ec2Options {
        ec2::Ec2Options {
            region: self.region.clone().or_else(|| region.map(str::to_string)),
            endpoint_url: self.endpoint_url.clone(),
            call_timeout: self.call_timeout,
        }
    }
}
