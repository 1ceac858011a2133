//! `autopaxos ami bake`: make an AMI that boots any role.
//!
//! Launches a builder instance from a base image with instance-initiated shutdown behaviour `stop` and
//! the user-data script `ami/builder-user-data.sh` (the binary from `--binary-url`, the systemd unit
//! `ami/autopaxos.service`, the sysctl file `ami/99-autopaxos.conf`, then `poweroff`); waits for the
//! builder to be `stopped`; creates the image; waits for it to be `available`; terminates the builder
//! and prints the AMI id. Every wait is bounded by `--timeout`; on failure the builder is terminated.

use super::ec2::{CloudError, Ec2, LaunchSpec, OnShutdown, TAG_ROLE};
use super::AwsFlags;
use crate::duration::parse_duration;
use clap::{Args, Subcommand};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The builder's user-data template.
pub const BUILDER_SCRIPT: &str = include_str!("../../ami/builder-user-data.sh");
/// The systemd unit installed on the image.
pub const SYSTEMD_UNIT: &str = include_str!("../../ami/autopaxos.service");
/// The sysctl settings installed on the image.
pub const SYSCTL: &str = include_str!("../../ami/99-autopaxos.conf");
/// Tag put on a builder instance, naming the bake.
pub const TAG_BAKE: &str = "autopaxos:bake";

/// `autopaxos ami ...`.
#[derive(Args, Debug)]
pub struct AmiArgs {
    #[command(subcommand)]
    command: AmiCommand,
}

#[derive(Subcommand, Debug)]
enum AmiCommand {
    /// Bake an AMI: a builder instance installs the binary, the systemd unit and the sysctl settings and
    /// powers off; the image is made from the stopped builder; the builder is terminated. Prints the
    /// AMI id on stdout.
    Bake(BakeArgs),
}

/// `autopaxos ami bake`.
#[derive(Args, Debug, Clone)]
pub struct BakeArgs {
    /// The image to start from (a Debian or Ubuntu with Linux 5.8+, systemd and curl or wget).
    #[arg(long)]
    pub base_ami: String,
    /// Where the builder downloads the autopaxos binary (x86_64 Linux, built with --features cloud).
    #[arg(long)]
    pub binary_url: String,
    /// The builder's instance type.
    #[arg(long, default_value = "c5.xlarge")]
    pub instance_type: String,
    /// The new image's name (default: autopaxos-<unix time>).
    #[arg(long)]
    pub name: Option<String>,
    /// Bound on the whole bake (builder install and power-off, then the image).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How often to poll the builder's and the image's state.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll: Duration,
    /// SSH key pair for the builder (to debug a bake; the log is /var/log/autopaxos-bake.log).
    #[arg(long)]
    pub key_name: Option<String>,
    /// Subnet for the builder (default: the default VPC's).
    #[arg(long)]
    pub subnet_id: Option<String>,
    #[command(flatten)]
    pub aws: AwsFlags,
}

/// The builder's user-data for `binary_url`.
pub fn builder_user_data(binary_url: &str) -> Result<String, String> {
    if binary_url.is_empty() || binary_url.contains('\'') || binary_url.contains('\n') {
        return Err(format!(
            "--binary-url '{binary_url}' must be a non-empty URL without quotes or newlines"
        ));
    }
    Ok(BUILDER_SCRIPT
        .replace("@BINARY_URL@", binary_url)
        .replace("@UNIT@", SYSTEMD_UNIT.trim_end())
        .replace("@SYSCTL@", SYSCTL.trim_end()))
}

/// Runs `autopaxos ami ...`.
pub fn run(args: AmiArgs) -> Result<(), String> {
    match args.command {
        AmiCommand::Bake(b) => {
            let ami = bake(&b).map_err(|e| e.to_string())?;
            println!("{ami}");
            Ok(())
        }
    }
}

/// Bakes an image; returns its AMI id.
pub fn bake(args: &BakeArgs) -> Result<String, CloudError> {
    let start = Instant::now();
    let user_data = builder_user_data(&args.binary_url).map_err(CloudError::Unexpected)?;
    let name = args.name.clone().unwrap_or_else(|| {
        format!("autopaxos-{}", SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    });
    let ec2 = Ec2::connect(&args.aws.options(None))?;
    let spec = LaunchSpec {
        ami: args.base_ami.clone(),
        instance_type: args.instance_type.clone(),
        count: 1,
        tags: vec![
            (TAG_ROLE.into(), "builder".into()),
            (TAG_BAKE.into(), name.clone()),
            ("Name".into(), format!("{name}-builder")),
        ],
        user_data,
        on_shutdown: OnShutdown::Stop,
        key_name: args.key_name.clone(),
        subnet_id: args.subnet_id.clone(),
        security_group_ids: Vec::new(),
    };
    let builder = ec2.run_instances(&spec)?.remove(0);
    tracing::info!(%builder, base_ami = %args.base_ami, "builder launched; waiting for it to install and power off");
    let left = |what: &str| {
        let rest = args.timeout.saturating_sub(start.elapsed());
        tracing::debug!("{what}: {rest:?} of the bake's timeout left");
        rest
    };
    let made = (|| {
        ec2.wait_instance_state(&builder, "stopped", left("builder"), args.poll).map_err(|e| match e {
            CloudError::Timeout { after, detail, .. } => CloudError::Timeout {
                what: format!(
                    "waiting for builder {builder} to install and power off (its log: /var/log/autopaxos-bake.log)"
                ),
                after,
                detail,
            },
            e => e,
        })?;
        tracing::info!(%builder, "builder stopped after {:.0?}; creating the image", start.elapsed());
        let ami = ec2.create_image(&builder, &name, "autopaxos: boots the role in its user-data")?;
        ec2.wait_image_available(&ami, left("image"), args.poll)?;
        Ok::<_, CloudError>(ami)
    })();
    // The builder goes whatever happened; a failure to terminate it is reported, not hidden.
    let terminated = ec2.terminate(std::slice::from_ref(&builder));
    let ami = match (made, terminated) {
        (Ok(ami), Ok(())) => ami,
        (Ok(ami), Err(e)) => {
            tracing::warn!(
                "image {ami} is ready but terminating builder {builder} failed: {e}; terminate it by hand"
            );
            ami
        }
        (Err(e), Ok(())) => {
            tracing::info!(%builder, "builder terminated after the failure");
            return Err(e);
        }
        (Err(e), Err(t)) => {
            tracing::warn!("terminating builder {builder} failed too: {t}; terminate it by hand");
            return Err(e);
        }
    };
    tracing::info!(%ami, %name, "image available after {:.1?}; builder {builder} terminated", start.elapsed());
    Ok(ami)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_script_carries_binary_unit_and_sysctl_then_powers_off() {
        let s = builder_user_data("https://example.invalid/autopaxos").unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("fetch 'https://example.invalid/autopaxos' /usr/local/bin/autopaxos.download"));
        assert!(s.contains("ExecStart=/usr/local/bin/autopaxos boot"));
        assert!(s.contains("kernel.io_uring_disabled = 0"));
        assert!(!s.contains('@'), "a placeholder is left: {s}");
        assert!(s.trim_end().ends_with("poweroff"));
        assert!(builder_user_data("http://x/a'b").is_err());
    }
}
