// wait_with_output is eventually called, but clippy can't see through the
// branching cleanup paths and flags `wait_with_output("server", server)`.
#![allow(clippy::zombie_processes)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command},
    time::Duration,
};

fn run_example(
    server: &str,
    client: &str,
    example_dir: &str,
    args: &[&str],
) -> Result<(), Box<dyn std::error::Error>> {
    // start the server and give it a moment to start.
    let mut server = do_run_example(server, example_dir, args).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let mut client = do_run_example(client, example_dir, args).spawn().unwrap();
    let mut client_succeeded = false;
    let start = std::time::Instant::now();
    let timeout = Duration::from_secs(600);
    loop {
        if start.elapsed() > timeout {
            println!("Running the client timed out. output:");
            client.kill().unwrap_or_else(|e| {
                println!("This may occur on Windows if the process has exited: {e}");
            });
            let output = client.stdout.unwrap();
            BufReader::new(output).lines().for_each(|line| {
                println!("client output: {}", line.unwrap());
            });
            break;
        }

        match client.try_wait() {
            Ok(Some(status)) => {
                println!(
                    "Client exited with status: {:?} success {}",
                    &status,
                    &status.success()
                );
                wait_with_output("client", client);
                client_succeeded = status.success();
                break;
            }
            Ok(None) => {
                // still running
                continue;
            }
            Err(e) => {
                println!("Error: {e}");
                break;
            }
        }
    }

    // be sure to clean up the server, the client should have run to completion
    server.kill()?;
    wait_with_output("server", server);
    assert!(client_succeeded);
    Ok(())
}

fn do_run_example(example: &str, example_dir: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("run").arg("--example").arg(example);

    if !args.is_empty() {
        cmd.arg("--").args(args);
    }

    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .current_dir(example_dir);
    cmd
}

fn wait_with_output(name: &str, cmd: Child) {
    if let Ok(output) = cmd.wait_with_output() {
        println!("==== {name} output begin");
        println!("==== stdout:");
        output.stdout.lines().for_each(|line| {
            println!("{}", line.unwrap());
        });
        println!("==== stderr:");
        output.stderr.lines().for_each(|line| {
            println!("{}", line.unwrap());
        });
        println!("==== {name} output end");
    }
}

#[test]
fn run_examples() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "rustprotobuf")]
    {
        println!("Running examples with rustprotobuf feature");
        // Local
        run_example("server", "client", "example", &[])?;
        #[cfg(unix)]
        run_example("async-server", "async-client", "example", &[])?;
        #[cfg(unix)]
        run_example("async-stream-server", "async-stream-client", "example", &[])?;

        // TCP
        #[cfg(not(windows))]
        {
            run_example("server", "client", "example", &["--tcp"])?;
            run_example("async-server", "async-client", "example", &["--tcp"])?;
            run_example(
                "async-stream-server",
                "async-stream-client",
                "example",
                &["--tcp"],
            )?;
        }

        #[cfg(unix)]
        {
            run_self_contained_example("async-stream-close-order", "data frames dropped");
            run_self_contained_example("async-data-order", "data frames reordered");
            run_self_contained_example("async-slow-consumer", "connection reader blocked");
        }
    }

    #[cfg(feature = "prost")]
    {
        println!("Running examples with prost feature");
        // The sync and async implementations take separate response and
        // macro paths, so exercise both runtimes plus streaming.
        run_example("server", "client", "example-prost", &[])?;
        #[cfg(unix)]
        run_example("async-server", "async-client", "example-prost", &[])?;
        #[cfg(unix)]
        run_example(
            "async-stream-server",
            "async-stream-client",
            "example-prost",
            &[],
        )?;
    }

    Ok(())
}

/// Runs an example that hosts both the server and the client in one process,
/// and fails if it exits non-zero or does not finish in time.
#[cfg(all(unix, feature = "rustprotobuf"))]
fn run_self_contained_example(name: &str, failure_hint: &str) {
    let mut child = do_run_example(name, "example", &[]).spawn().unwrap();

    let timeout = Duration::from_secs(120);
    let start = std::time::Instant::now();
    loop {
        if start.elapsed() > timeout {
            child.kill().unwrap_or(());
            wait_with_output(name, child);
            panic!("{} timed out", name);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                wait_with_output(name, child);
                assert!(status.success(), "{} failed ({})", name, failure_hint);
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("Error waiting for {}: {:?}", name, e),
        }
    }
}
