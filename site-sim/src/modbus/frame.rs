//! Byte-level Modbus: request PDU decoding, response PDU encoding, the RTU CRC and RTU request
//! framing. The simulator frames the wire itself (rather than through tokio-modbus's server
//! skeletons) so that faults can send raw garbage, wrong unit ids, or close a connection.

use std::borrow::Cow;

use tokio_modbus::{ExceptionCode, Request, Response};

/// Decode a request PDU (function code first). Unknown function codes give
/// `IllegalFunction`, malformed bodies `IllegalDataValue` (the exceptions a device answers).
pub(crate) fn decode_request(pdu: &[u8]) -> Result<Request<'static>, ExceptionCode> {
    let Some((&fc, body)) = pdu.split_first() else {
        return Err(ExceptionCode::IllegalFunction);
    };
    let bad = ExceptionCode::IllegalDataValue;
    let u16_at = |i: usize| -> Result<u16, ExceptionCode> {
        match (body.get(i), body.get(i + 1)) {
            (Some(&hi), Some(&lo)) => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(bad),
        }
    };
    let exact = |n: usize| if body.len() == n { Ok(()) } else { Err(bad) };
    let req = match fc {
        0x01..=0x06 => {
            exact(4)?;
            let (a, b) = (u16_at(0)?, u16_at(2)?);
            match fc {
                0x01 => Request::ReadCoils(a, b),
                0x02 => Request::ReadDiscreteInputs(a, b),
                0x03 => Request::ReadHoldingRegisters(a, b),
                0x04 => Request::ReadInputRegisters(a, b),
                0x05 => match b {
                    0xFF00 => Request::WriteSingleCoil(a, true),
                    0x0000 => Request::WriteSingleCoil(a, false),
                    _ => return Err(bad),
                },
                _ => Request::WriteSingleRegister(a, b),
            }
        }
        0x0F => {
            let (addr, qty) = (u16_at(0)?, u16_at(2)?);
            let bc = usize::from(*body.get(4).ok_or(bad)?);
            exact(5 + bc)?;
            if bc != usize::from(qty).div_ceil(8) {
                return Err(bad);
            }
            let bits = &body[5..];
            let coils: Vec<bool> = (0..usize::from(qty))
                .map(|i| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                .collect();
            Request::WriteMultipleCoils(addr, Cow::Owned(coils))
        }
        0x10 => {
            let (addr, qty) = (u16_at(0)?, u16_at(2)?);
            let bc = usize::from(*body.get(4).ok_or(bad)?);
            exact(5 + bc)?;
            if bc != usize::from(qty) * 2 {
                return Err(bad);
            }
            let words = (0..usize::from(qty))
                .map(|i| u16_at(5 + 2 * i))
                .collect::<Result<Vec<_>, _>>()?;
            Request::WriteMultipleRegisters(addr, Cow::Owned(words))
        }
        0x16 => {
            exact(6)?;
            Request::MaskWriteRegister(u16_at(0)?, u16_at(2)?, u16_at(4)?)
        }
        0x17 => {
            let (ra, rq, wa, wq) = (u16_at(0)?, u16_at(2)?, u16_at(4)?, u16_at(6)?);
            let bc = usize::from(*body.get(8).ok_or(bad)?);
            exact(9 + bc)?;
            if bc != usize::from(wq) * 2 {
                return Err(bad);
            }
            let words = (0..usize::from(wq))
                .map(|i| u16_at(9 + 2 * i))
                .collect::<Result<Vec<_>, _>>()?;
            Request::ReadWriteMultipleRegisters(ra, rq, wa, Cow::Owned(words))
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    };
    Ok(req)
}

fn byte_len(n: usize) -> u8 {
    // Callers limit counts so that n <= 250; saturate rather than panic if not.
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// Encode a response (or exception) PDU for a request with function code `fc`.
pub(crate) fn encode_response(fc: u8, result: &Result<Response, ExceptionCode>) -> Vec<u8> {
    let response = match result {
        Err(code) => return vec![fc | 0x80, u8::from(*code)],
        Ok(r) => r,
    };
    let mut out = vec![response.function_code().value()];
    match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => {
            let mut packed = vec![0u8; bits.len().div_ceil(8)];
            for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
                packed[i / 8] |= 1 << (i % 8);
            }
            out.push(byte_len(packed.len()));
            out.extend(packed);
        }
        Response::ReadHoldingRegisters(words)
        | Response::ReadInputRegisters(words)
        | Response::ReadWriteMultipleRegisters(words) => {
            out.push(byte_len(words.len() * 2));
            out.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        }
        Response::WriteSingleCoil(addr, value) => {
            out.extend(addr.to_be_bytes());
            out.extend(if *value { [0xFF, 0x00] } else { [0x00, 0x00] });
        }
        Response::WriteMultipleCoils(addr, qty) | Response::WriteMultipleRegisters(addr, qty) => {
            out.extend(addr.to_be_bytes());
            out.extend(qty.to_be_bytes());
        }
        Response::WriteSingleRegister(addr, value) => {
            out.extend(addr.to_be_bytes());
            out.extend(value.to_be_bytes());
        }
        Response::MaskWriteRegister(addr, and, or) => {
            out.extend(addr.to_be_bytes());
            out.extend(and.to_be_bytes());
            out.extend(or.to_be_bytes());
        }
        Response::Custom(_, bytes) => out.extend(bytes.iter()),
        // The simulator never produces these.
        Response::ReportServerId(..) | Response::ReadDeviceIdentification(_) => {
            return vec![fc | 0x80, u8::from(ExceptionCode::ServerDeviceFailure)];
        }
    }
    out
}

/// CRC-16/MODBUS of `data` (transmitted low byte first).
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// An RTU ADU: unit id, PDU, CRC (low byte first).
pub(crate) fn rtu_adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + 3);
    out.push(unit);
    out.extend_from_slice(pdu);
    out.extend(crc16(&out).to_le_bytes());
    out
}

/// A Modbus TCP ADU: MBAP header then PDU.
pub(crate) fn tcp_adu(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let len = u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(pdu.len() + 7);
    out.extend(transaction.to_be_bytes());
    out.extend([0, 0]);
    out.extend(len.to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
    out
}

/// Longest RTU frame.
pub(crate) const MAX_RTU_FRAME: usize = 256;

/// Result of looking for one RTU request frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RtuScan {
    /// A CRC-valid frame of this many bytes starts the buffer.
    Frame(usize),
    /// More bytes are needed.
    Incomplete,
    /// The first byte cannot start a frame: drop it and look again.
    Skip,
}

/// The length of the frame a known request function code implies: `Some(Some(n))`,
/// `Some(None)` when more bytes are needed to tell, `None` for unknown function codes.
fn expected_len(buf: &[u8]) -> Option<Option<usize>> {
    let fc = *buf.get(1)?;
    Some(match fc {
        0x01..=0x06 | 0x08 => Some(8),
        0x07 | 0x0B | 0x0C | 0x11 => Some(4),
        0x0F | 0x10 => buf.get(6).map(|&bc| 9 + usize::from(bc)),
        0x16 => Some(10),
        0x17 => buf.get(10).map(|&bc| 13 + usize::from(bc)),
        _ => return None,
    })
}

fn crc_ok(buf: &[u8], n: usize) -> bool {
    n >= 4 && buf.len() >= n && crc16(&buf[..n - 2]).to_le_bytes() == [buf[n - 2], buf[n - 1]]
}

/// Does a complete, CRC-valid frame with a known function code start at `buf[0]`?
fn known_frame_at(buf: &[u8]) -> bool {
    matches!(expected_len(buf), Some(Some(n)) if crc_ok(buf, n))
}

/// Find the request frame at the start of `buf`: by the length its function code implies, or,
/// for function codes the simulator does not know, the shortest CRC-valid prefix. When the
/// start of the buffer is not (yet) a frame but a complete frame follows later, the leading
/// bytes are noise and get skipped.
pub(crate) fn scan_rtu_request(buf: &[u8]) -> RtuScan {
    if buf.len() < 4 {
        return RtuScan::Incomplete;
    }
    let head = match expected_len(buf) {
        Some(Some(n)) if buf.len() < n => RtuScan::Incomplete,
        Some(Some(n)) if crc_ok(buf, n) => RtuScan::Frame(n),
        Some(Some(_)) => RtuScan::Skip,
        Some(None) => RtuScan::Incomplete,
        None => match (4..=buf.len().min(MAX_RTU_FRAME)).find(|&n| crc_ok(buf, n)) {
            Some(n) => RtuScan::Frame(n),
            None if buf.len() >= MAX_RTU_FRAME => RtuScan::Skip,
            None => RtuScan::Incomplete,
        },
    };
    if head == RtuScan::Incomplete && (1..buf.len()).any(|k| known_frame_at(&buf[k..])) {
        return RtuScan::Skip;
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference() {
        // Reference frame: 01 03 00 00 00 0A C5 CD
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]).to_le_bytes(),
            [0xC5, 0xCD]
        );
        assert_eq!(
            rtu_adu(1, &[0x03, 0, 0, 0, 0x0A]),
            [1, 3, 0, 0, 0, 0x0A, 0xC5, 0xCD]
        );
    }

    #[test]
    fn decodes_requests() {
        assert_eq!(
            decode_request(&[3, 0, 1, 0, 2]),
            Ok(Request::ReadHoldingRegisters(1, 2))
        );
        assert_eq!(
            decode_request(&[5, 0, 7, 0xFF, 0]),
            Ok(Request::WriteSingleCoil(7, true))
        );
        assert_eq!(
            decode_request(&[5, 0, 7, 0x12, 0]),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x0F, 0, 1, 0, 10, 2, 0b0000_0101, 0b10]),
            Ok(Request::WriteMultipleCoils(
                1,
                Cow::Owned(vec![
                    true, false, true, false, false, false, false, false, false, true
                ])
            ))
        );
        assert_eq!(
            decode_request(&[0x10, 0, 1, 0, 2, 4, 0x12, 0x34, 0x56, 0x78]),
            Ok(Request::WriteMultipleRegisters(
                1,
                Cow::Owned(vec![0x1234, 0x5678])
            ))
        );
        assert_eq!(
            decode_request(&[0x10, 0, 1, 0, 2, 3, 0x12, 0x34, 0x56]),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x16, 0, 4, 0, 0xF2, 0, 0x25]),
            Ok(Request::MaskWriteRegister(4, 0xF2, 0x25))
        );
        assert_eq!(
            decode_request(&[0x17, 0, 1, 0, 2, 0, 5, 0, 1, 2, 0xAB, 0xCD]),
            Ok(Request::ReadWriteMultipleRegisters(
                1,
                2,
                5,
                Cow::Owned(vec![0xABCD])
            ))
        );
        assert_eq!(
            decode_request(&[3, 0, 1, 0]),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            decode_request(&[0x2B, 0x0E, 1, 0]),
            Err(ExceptionCode::IllegalFunction)
        );
        assert_eq!(decode_request(&[]), Err(ExceptionCode::IllegalFunction));
    }

    #[test]
    fn encodes_responses() {
        assert_eq!(
            encode_response(3, &Ok(Response::ReadHoldingRegisters(vec![0x4148, 0]))),
            [3, 4, 0x41, 0x48, 0, 0]
        );
        assert_eq!(
            encode_response(
                1,
                &Ok(Response::ReadCoils(vec![
                    true, false, true, true, false, false, false, false, true
                ]))
            ),
            [1, 2, 0b0000_1101, 1]
        );
        assert_eq!(
            encode_response(3, &Err(ExceptionCode::IllegalDataAddress)),
            [0x83, 2]
        );
        assert_eq!(
            encode_response(5, &Ok(Response::WriteSingleCoil(3, true))),
            [5, 0, 3, 0xFF, 0]
        );
        assert_eq!(
            encode_response(0x10, &Ok(Response::WriteMultipleRegisters(3, 2))),
            [0x10, 0, 3, 0, 2]
        );
    }

    #[test]
    fn frames_rtu_requests() {
        let read = rtu_adu(1, &[3, 0, 0, 0, 2]);
        assert_eq!(scan_rtu_request(&read), RtuScan::Frame(8));
        assert_eq!(scan_rtu_request(&read[..5]), RtuScan::Incomplete);
        let mut noisy = vec![0xAA];
        noisy.extend(&read);
        assert_eq!(scan_rtu_request(&noisy), RtuScan::Skip);
        assert_eq!(scan_rtu_request(&noisy[1..]), RtuScan::Frame(8));
        let write = rtu_adu(2, &[0x10, 0, 1, 0, 2, 4, 1, 2, 3, 4]);
        assert_eq!(scan_rtu_request(&write[..7]), RtuScan::Incomplete);
        assert_eq!(scan_rtu_request(&write), RtuScan::Frame(13));
        let unknown = rtu_adu(1, &[0x41, 9, 9]);
        assert_eq!(scan_rtu_request(&unknown), RtuScan::Frame(6));
        assert_eq!(scan_rtu_request(&unknown[..5]), RtuScan::Incomplete);
        // Noise that looks like the start of a long frame, followed by a complete frame.
        let mut noisy = vec![0x55, 0x10, 0, 0, 0, 0x7B, 0xF6];
        noisy.extend(&read);
        assert_eq!(scan_rtu_request(&noisy), RtuScan::Skip);
        let mut noisy = vec![0xAA, 0x55, 0x00];
        noisy.extend(&read);
        assert_eq!(scan_rtu_request(&noisy), RtuScan::Skip);
    }
}
