//! The harness's network: one TCP proxy per directed link between processes (node `a` reaches node
//! `b` at the proxy of (a, b), because `a`'s cluster file says `b` is there). Cutting a link closes
//! its connections and refuses new ones until it is healed, so a partition is exactly the set of
//! links cut, in each direction, while everything stays on loopback.

use std::collections::BTreeMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Node ids, as the cluster file numbers them.
pub type Id = u32;

struct Link {
    target: SocketAddr,
    cut: AtomicBool,
    /// Both ends of every connection carried, to close them when the link is cut.
    open: Mutex<Vec<(TcpStream, TcpStream, Arc<AtomicBool>)>>,
}

/// Every link's proxy.
pub struct Proxies {
    links: BTreeMap<(Id, Id), (SocketAddr, Arc<Link>)>,
    stop: Arc<AtomicBool>,
}

impl Proxies {
    /// Proxies for each (from, to) in `links`, reaching `to` at `targets[to]`.
    pub fn start(links: &[(Id, Id)], targets: &BTreeMap<Id, SocketAddr>) -> io::Result<Proxies> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut all = BTreeMap::new();
        for &(from, to) in links {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let link = Arc::new(Link {
                target: targets[&to],
                cut: AtomicBool::new(false),
                open: Mutex::new(Vec::new()),
            });
            let (l, s) = (link.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("proxy-{from}-{to}"))
                .stack_size(64 << 10)
                .spawn(move || accept(listener, l, s))?;
            all.insert((from, to), (addr, link));
        }
        Ok(Proxies { links: all, stop })
    }

    /// Where `from` reaches `to`.
    pub fn addr(&self, from: Id, to: Id) -> SocketAddr {
        self.links[&(from, to)].0
    }

    /// Cuts (`true`) or heals the link from `from` to `to`, if there is one.
    pub fn set_cut(&self, from: Id, to: Id, cut: bool) {
        let Some((_, link)) = self.links.get(&(from, to)) else { return };
        link.cut.store(cut, Ordering::SeqCst);
        if cut {
            for (a, b, _) in link.open.lock().expect("not poisoned").drain(..) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for (_, link) in self.links.values() {
            link.cut.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, link) in self.links.values() {
            // Wakes the accept loop, which then sees `stop`.
            let _ = TcpStream::connect(addr);
            for (a, b, _) in link.open.lock().expect("not poisoned").drain(..) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept(listener: TcpListener, link: Arc<Link>, stop: Arc<AtomicBool>) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inbound) = incoming else { continue };
        if link.cut.load(Ordering::SeqCst) {
            continue; // dropped: closed at once
        }
        let Ok(outbound) = TcpStream::connect(link.target) else { continue };
        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
        let done = Arc::new(AtomicBool::new(false));
        let (Ok(in2), Ok(out2), Ok(in3), Ok(out3)) =
            (inbound.try_clone(), outbound.try_clone(), inbound.try_clone(), outbound.try_clone())
        else {
            continue;
        };
        {
            let mut open = link.open.lock().expect("not poisoned");
            open.retain(|(_, _, finished)| !finished.load(Ordering::SeqCst));
            open.push((in3, out3, done.clone()));
        }
        pump(inbound, outbound, done.clone());
        pump(out2, in2, done);
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, done: Arc<AtomicBool>) {
    let _ = thread::Builder::new().stack_size(64 << 10).spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        done.store(true, Ordering::SeqCst);
    });
}
