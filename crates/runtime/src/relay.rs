//! Carrying a TCP connection to another: used where a task's network
//! reaches the service on this host's loopback (the node agent's network
//! namespaces, the Docker runtime's networks).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

/// Copies both ways until each side has closed its end (half-closes passed on).
pub fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    };
    let up = std::thread::spawn(move || copy(a, b2));
    copy(b, a2);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn bytes_cross_both_ways_and_a_close_is_passed_on() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let (server_addr, front_addr) = (server.local_addr().unwrap(), front.local_addr().unwrap());
        std::thread::spawn(move || {
            let (inside, _) = front.accept().unwrap();
            pipe(inside, TcpStream::connect(server_addr).unwrap());
        });
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            s.write_all(format!("echo {got}").as_bytes()).unwrap();
        });
        let mut client = TcpStream::connect(front_addr).unwrap();
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "echo ping");
        echo.join().unwrap();
    }
}
