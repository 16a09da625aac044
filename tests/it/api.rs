//! The coordinator daemon as a real process: token auth, durable submit
//! (survives SIGKILL), status with a waiting reason, cancel, results.

use std::path::Path;
use std::process::{Child, Stdio};

use reqwest::blocking::{Client, multipart};
use serde_json::Value;

use crate::helpers::*;

/// A running `pixmesh coordinator`, killed on drop.
struct Daemon {
    child: Child,
    base: String,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let mut child = coordinator_command(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coordinator");
        let line = pixmesh::bench::mesh::read_lines_until(&mut child, "http://")
            .expect("the coordinator's banner")
            .join(" ");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Daemon { child, base }
    }

    fn kill(mut self) {
        // SIGKILL: no chance to flush or clean up, as in a crash.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("api-token"))
        .expect("token file")
        .trim()
        .to_owned()
}

fn form(steps: &str, images: &[&Path]) -> multipart::Form {
    let mut f = multipart::Form::new().text("steps", steps.to_owned());
    for p in images {
        let bytes = std::fs::read(p).expect("read image");
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        f = f.part("image", multipart::Part::bytes(bytes).file_name(name));
    }
    f
}

#[test]
fn submit_is_authenticated_durable_and_reports_why_it_waits() {
    let dir = tempfile::tempdir().expect("data dir");
    let daemon = Daemon::start(dir.path());
    let http = Client::new();
    let photos = photos();
    let images = [photos[0].as_path(), photos[1].as_path()];

    // The token file is private to its owner.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("api-token"))
        .expect("token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // No token, or a wrong one: 401, nothing stored. (A small body: the
    // server refuses before reading it.)
    let r = http
        .post(format!("{}/v1/jobs", daemon.base))
        .multipart(multipart::Form::new().text("steps", "resize 64"))
        .send()
        .expect("send");
    assert_eq!(r.status(), 401);
    let body: Value = r.json().expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing API token")),
        "{body}"
    );
    let r = http
        .get(format!("{}/v1/jobs", daemon.base))
        .bearer_auth("not-the-token")
        .send()
        .expect("send");
    assert_eq!(r.status(), 401);

    let auth = token(dir.path());
    // A bad spec is refused naming the step.
    let r = http
        .post(format!("{}/v1/jobs", daemon.base))
        .bearer_auth(&auth)
        .multipart(form("orient | resize 0x10", &images))
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().expect("json");
    assert_eq!(
        body["error"],
        "step 2 (resize): width must be 1..=65535, got 0"
    );

    // A good submit is acknowledged with the job id.
    let r = http
        .post(format!("{}/v1/jobs", daemon.base))
        .bearer_auth(&auth)
        .multipart(form("orient | resize 256 | webp q=80", &images))
        .send()
        .expect("send");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().expect("json");
    let job = body["job"].as_u64().expect("job id");
    assert_eq!(body["tasks"], 2);

    // SIGKILL right after the acknowledgement, then start again on the same data.
    daemon.kill();
    let daemon = Daemon::start(dir.path());
    let r = http
        .get(format!("{}/v1/jobs/{job}", daemon.base))
        .bearer_auth(&auth)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let status: Value = r.json().expect("json");
    assert_eq!(status["steps"], "orient | resize 256x | webp q=80");
    assert_eq!(status["queued"], 2);
    let names: Vec<&str> = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<String> = images
        .iter()
        .map(|p| p.file_name().expect("n").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, expected);
    let waiting = status["waiting"].as_str().expect("a waiting reason");
    assert!(waiting.contains("no agents have joined"), "{waiting}");

    // A long poll on a job where nothing can finish holds the request for
    // its whole wait, then answers with the unchanged status.
    let asked = std::time::Instant::now();
    let r = http
        .get(format!(
            "{}/v1/jobs/{job}?finished=0&wait_ms=400",
            daemon.base
        ))
        .bearer_auth(&auth)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(asked.elapsed() >= std::time::Duration::from_millis(400));
    let held: Value = r.json().expect("json");
    assert_eq!(
        (held["queued"].as_u64(), held["done"].as_u64()),
        (Some(2), Some(0))
    );

    // The listing shows it; a result is not there yet; cancel stops it.
    let list: Value = http
        .get(format!("{}/v1/jobs", daemon.base))
        .bearer_auth(&auth)
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(list[0]["id"], job);
    let r = http
        .get(format!(
            "{}/v1/jobs/{job}/results/{}",
            daemon.base, expected[0]
        ))
        .bearer_auth(&auth)
        .send()
        .expect("send");
    assert_eq!(r.status(), 409);
    let r = http
        .post(format!("{}/v1/jobs/{job}/cancel", daemon.base))
        .bearer_auth(&auth)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().expect("json");
    assert_eq!(body["cancelled"], 2);
    let status: Value = http
        .get(format!("{}/v1/jobs/{job}", daemon.base))
        .bearer_auth(&auth)
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(
        (status["cancelled"].as_u64(), status["queued"].as_u64()),
        (Some(2), Some(0))
    );
    let r = http
        .get(format!("{}/v1/jobs/999", daemon.base))
        .bearer_auth(&auth)
        .send()
        .expect("send");
    assert_eq!(r.status(), 404);
}

#[test]
fn malformed_submits_get_clear_errors() {
    let dir = tempfile::tempdir().expect("data dir");
    let daemon = Daemon::start(dir.path());
    let http = Client::new();
    let auth = token(dir.path());
    let photo = photos()[0].clone();
    let post = |form: multipart::Form| {
        let r = http
            .post(format!("{}/v1/jobs", daemon.base))
            .bearer_auth(&auth)
            .multipart(form)
            .send()
            .expect("send");
        let status = r.status().as_u16();
        let body: Value = r.json().expect("json");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (s, e) = post(multipart::Form::new().text("steps", "resize 10"));
    assert_eq!((s, e.contains("no `image` fields")), (400, true), "{e}");
    let (s, e) = post(
        form("resize 10", &[])
            .part(
                "image",
                multipart::Part::bytes(vec![1, 2]).file_name("x.jpg"),
            )
            .part("image", multipart::Part::bytes(vec![3]).file_name("x.jpg")),
    );
    assert_eq!(
        (s, e.contains("two images are named \"x.jpg\"")),
        (400, true),
        "{e}"
    );
    let (s, e) = post(form("resize 10", &[photo.as_path()]).text("colour", "red"));
    assert_eq!(
        (s, e.contains("unknown field \"colour\"")),
        (400, true),
        "{e}"
    );
    let (s, e) = post(
        multipart::Form::new().part("image", multipart::Part::bytes(vec![1]).file_name("a.jpg")),
    );
    assert_eq!((s, e.contains("missing `spec`")), (400, true), "{e}");

    let list_jobs = || -> Value {
        http.get(format!("{}/v1/jobs", daemon.base))
            .bearer_auth(&auth)
            .send()
            .expect("send")
            .json()
            .expect("json")
    };
    // A client that hangs up in the middle of an upload: the spec and one
    // image arrived (so the job was written and its task queued), the rest
    // never does.
    {
        use std::io::Write as _;
        let addr = daemon.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        let b = "cut-here";
        let image = std::fs::read(&photo).expect("photo");
        let mut body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\nresize 10 | png\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&image);
        body.extend_from_slice(
            format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.jpg\"\r\n\r\n").as_bytes(),
        );
        let head = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {auth}\r\n\
             Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {}\r\n\r\n",
            body.len() + 1_000_000
        );
        conn.write_all(head.as_bytes()).expect("head");
        conn.write_all(&body).expect("body");
        // The job is there, still receiving, with the image that arrived
        // queued (no agent here to run it) ...
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let jobs = list_jobs();
            if jobs[0]["receiving"] == true && jobs[0]["queued"] == 1 {
                assert_eq!(jobs[0]["tasks"][0]["name"], "a.jpg");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no receiving job: {jobs:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // ... then the client hangs up.
        drop(conn);
    }
    // Nothing of any refused or abandoned upload is left as a job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let jobs = list_jobs();
        if jobs.as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs left by failed uploads: {jobs:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn submit_streams_files_largest_first_and_names_one_that_changed() {
    use pixmesh::client::{MultipartUpload, Remote, Source};
    let dir = tempfile::tempdir().expect("data dir");
    let daemon = Daemon::start(dir.path());
    let client = Remote {
        coordinator: Some(daemon.base.clone()),
        token: Some(token(dir.path())),
        home: Some(dir.path().join("home")),
        json: false,
    }
    .connect()
    .expect("client");
    let bar = indicatif::ProgressBar::hidden();

    // `pixmesh submit` of a directory: every image, largest first, and
    // the bar counts the whole body.
    let photos = photos();
    let inputs = tempfile::tempdir().expect("inputs");
    for p in photos.iter().take(4) {
        std::fs::copy(p, inputs.path().join(p.file_name().expect("name"))).expect("copy");
    }
    let spec = pixmesh_protocol::JobSpec::from_compact("resize 64 | png").expect("spec");
    let (resp, bytes) = client
        .submit_with(&spec, &[inputs.path().to_path_buf()], &bar)
        .expect("submit");
    let mut sizes: Vec<(u64, String)> = photos
        .iter()
        .take(4)
        .map(|p| {
            let len = std::fs::metadata(p).expect("size").len();
            (
                len,
                p.file_name().expect("name").to_string_lossy().into_owned(),
            )
        })
        .collect();
    sizes.sort_by(|a, b| b.cmp(a));
    assert_eq!(bytes, sizes.iter().map(|s| s.0).sum::<u64>());
    assert!(bar.position() > bytes, "the bar counts the body");
    assert_eq!(bar.position(), bar.length().expect("length"));
    let job = resp["job"].as_u64().expect("job id");
    let view = client.job(job).expect("status");
    let names: Vec<&str> = view["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let largest_first: Vec<&str> = sizes.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(names, largest_first);

    // A file cut short after the upload was planned: the client names it,
    // and the coordinator keeps nothing of that upload.
    let cut = inputs.path().join("cut.jpg");
    std::fs::copy(&photos[0], &cut).expect("copy");
    let planned = std::fs::metadata(&cut).expect("size").len();
    let upload = MultipartUpload::new(
        "steps",
        "resize 64 | png",
        vec![
            (
                "first.jpg".to_owned(),
                Source::File(photos[1].clone(), {
                    std::fs::metadata(&photos[1]).expect("size").len()
                }),
            ),
            ("cut.jpg".to_owned(), Source::File(cut.clone(), planned)),
        ],
    );
    std::fs::write(&cut, b"\xFF\xD8 too short").expect("truncate");
    let e = format!(
        "{:#}",
        client.upload(upload, &bar).expect_err("a changed file")
    );
    assert!(
        e.contains(&format!(
            "{} changed while it was being uploaded",
            cut.display()
        )),
        "{e}"
    );
    // Refused (a wrong token) and unreachable: the errors say so.
    let remote = |coordinator: &str, token: &str| Remote {
        coordinator: Some(coordinator.to_owned()),
        token: Some(token.to_owned()),
        home: Some(dir.path().join("home")),
        json: false,
    };
    // One small image: the coordinator answers 401 without reading the
    // body, so the whole of it should fit in the socket's buffers.
    let small = tempfile::tempdir().expect("inputs");
    let smallest = photos
        .iter()
        .min_by_key(|p| std::fs::metadata(p).expect("size").len())
        .expect("a photo");
    std::fs::copy(smallest, small.path().join("small.jpg")).expect("copy");
    let inputs_dir = [small.path().to_path_buf()];
    let e = remote(&daemon.base, "wrong")
        .connect()
        .expect("client")
        .submit(&spec, &inputs_dir)
        .expect_err("a wrong token");
    assert!(format!("{e:#}").contains("(HTTP 401)"), "{e:#}");
    let e = remote("http://127.0.0.1:1", "x")
        .connect()
        .expect("client")
        .submit(&spec, &inputs_dir)
        .expect_err("no coordinator there");
    assert!(
        format!("{e:#}").contains("cannot reach the coordinator at http://127.0.0.1:1 (submit)"),
        "{e:#}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let jobs: Value = Client::new()
            .get(format!("{}/v1/jobs", daemon.base))
            .bearer_auth(token(dir.path()))
            .send()
            .expect("send")
            .json()
            .expect("json");
        let ids: Vec<u64> = jobs
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|j| j["id"].as_u64())
            .collect();
        if ids == [job] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs left by the failed upload: {jobs:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
