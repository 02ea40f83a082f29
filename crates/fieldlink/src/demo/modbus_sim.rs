//! The demo's field device: a Modbus TCP server in process, a boiler whose temperature drifts
//! towards its setpoint. Only what the demo needs: read holding and input registers (03, 04),
//! write one or several holding registers (06, 16); anything else gets exception 01.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fieldlink_core::shutdown::Shutdown;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Input register 0: the temperature in tenths of a degree.
pub(crate) const TEMP: usize = 0;
/// Holding register 1: the setpoint in tenths of a degree.
pub(crate) const SETPOINT: usize = 1;

#[derive(Debug)]
struct Registers {
    input: [u16; 8],
    holding: [u16; 8],
}

/// Serves the boiler on `listener` until `tasks` stop.
pub(crate) fn start(listener: TcpListener, tasks: &Shutdown) {
    let registers = Arc::new(Mutex::new(Registers {
        input: [0; 8],
        holding: [0; 8],
    }));
    {
        let mut r = lock(&registers);
        r.input[TEMP] = 180;
        r.holding[SETPOINT] = 215;
    }
    let drift = registers.clone();
    let stop = tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut step = 0u16;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            step = step.wrapping_add(1);
            let mut r = lock(&drift);
            let (temp, target) = (r.input[TEMP], r.holding[SETPOINT]);
            // Towards the setpoint, with a little ripple so that values keep changing.
            let next = if temp < target {
                temp + 3
            } else if temp > target {
                temp - 3
            } else {
                temp
            };
            r.input[TEMP] = next.saturating_add(step % 3).saturating_sub(1);
        }
    });
    let stop = tasks.clone();
    let connections = tasks.clone();
    tasks.spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            let (registers, stop) = (registers.clone(), stop.clone());
            connections.spawn(async move {
                tokio::select! {
                    _ = serve(stream, &registers) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
}

async fn serve(mut stream: TcpStream, registers: &Mutex<Registers>) -> std::io::Result<()> {
    loop {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await?;
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if !(2..=254).contains(&length) {
            return Ok(());
        }
        let mut pdu = vec![0u8; length - 1];
        stream.read_exact(&mut pdu).await?;
        let answer = answer(&pdu, &mut lock(registers));
        let mut frame = Vec::with_capacity(7 + answer.len());
        frame.extend_from_slice(&header[..4]);
        frame.extend_from_slice(&(answer.len() as u16 + 1).to_be_bytes());
        frame.push(header[6]);
        frame.extend_from_slice(&answer);
        stream.write_all(&frame).await?;
    }
}

fn answer(pdu: &[u8], r: &mut Registers) -> Vec<u8> {
    let word = |i: usize| {
        pdu.get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let exception = |fc: u8, code: u8| vec![fc | 0x80, code];
    let Some(&fc) = pdu.first() else {
        return exception(0, 1);
    };
    match fc {
        3 | 4 => {
            let (Some(start), Some(count)) = (word(1), word(3)) else {
                return exception(fc, 3);
            };
            let table = if fc == 3 { &r.holding } else { &r.input };
            let Some(values) = table.get(start..start + count) else {
                return exception(fc, 2);
            };
            let mut out = vec![fc, (count * 2) as u8];
            for v in values {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out
        }
        6 => {
            let (Some(addr), Some(value)) = (word(1), word(3)) else {
                return exception(fc, 3);
            };
            let Some(slot) = r.holding.get_mut(addr) else {
                return exception(fc, 2);
            };
            *slot = value as u16;
            pdu[..5].to_vec()
        }
        16 => {
            let (Some(start), Some(count)) = (word(1), word(3)) else {
                return exception(fc, 3);
            };
            let values: Vec<u16> = (0..count)
                .filter_map(|i| word(6 + 2 * i).map(|v| v as u16))
                .collect();
            if values.len() != count || start + count > r.holding.len() {
                return exception(fc, 2);
            }
            r.holding[start..start + count].copy_from_slice(&values);
            pdu[..5].to_vec()
        }
        _ => exception(fc, 1),
    }
}

fn lock(r: &Mutex<Registers>) -> std::sync::MutexGuard<'_, Registers> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_refusals_follow_the_modbus_frames() {
        let mut r = Registers {
            input: [0; 8],
            holding: [0; 8],
        };
        r.input[0] = 215;
        assert_eq!(answer(&[4, 0, 0, 0, 1], &mut r), vec![4, 2, 0, 215]);
        assert_eq!(answer(&[6, 0, 1, 0, 200], &mut r), vec![6, 0, 1, 0, 200]);
        assert_eq!(answer(&[3, 0, 1, 0, 1], &mut r), vec![3, 2, 0, 200]);
        assert_eq!(
            answer(&[3, 0, 7, 0, 2], &mut r),
            vec![0x83, 2],
            "past the end"
        );
        assert_eq!(
            answer(&[1, 0, 0, 0, 1], &mut r),
            vec![0x81, 1],
            "coils are not there"
        );
    }
}
