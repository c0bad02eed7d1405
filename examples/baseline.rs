//! The benchmark's yardstick: bare actix-web answering one fixed JSON body,
//! with the same actix version and worker count as healthd.
//!
//! `baseline ADDRESS WORKERS BODY_BYTES [PATH]` serves one route, `GET
//! PATH` (`/health` when not given), with a JSON object padded to
//! BODY_BYTES: what a health endpoint costs in actix-web when it does
//! nothing but return static bytes. The bench gives each probe path a
//! baseline at the same path, so that both parse the same request.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};

fn padded_body(size: usize) -> Bytes {
    let mut body = String::from("{\"status\":\"pass\",\"padding\":\"");
    let closing = "\"}";
    while body.len() + closing.len() < size {
        body.push('x');
    }
    body.push_str(closing);
    Bytes::from(body)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: baseline ADDRESS WORKERS BODY_BYTES [PATH]";
    let address = args.next().expect(usage);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).expect(usage);
    let body = padded_body(args.next().and_then(|b| b.parse().ok()).expect(usage));
    let path = args.next().unwrap_or_else(|| "/health".into());
    actix_web::rt::System::new().block_on(
        HttpServer::new(move || {
            let body = body.clone();
            App::new().route(
                &path,
                web::get().to(move || {
                    let body = body.clone();
                    async move {
                        HttpResponse::Ok()
                            .insert_header((
                                CONTENT_TYPE,
                                HeaderValue::from_static("application/health+json"),
                            ))
                            .body(body)
                    }
                }),
            )
        })
        .workers(workers)
        .bind(address)?
        .run(),
    )
}
