//! A minimal CMOS real-time clock (ports 0x70/0x71): the time of day in BCD,
//! status registers that say "no update in progress", and 128 bytes of NVRAM
//! for everything else. Linux reads it once at boot to set the wall clock.
//!
//! Snapshot state ([`CmosState`]) is the index register and the NVRAM; the
//! clock is not state (a restored VM reads the host's time).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Index port; the data port follows it.
pub const CMOS_BASE: u64 = 0x70;
/// Length of the claimed range.
pub const CMOS_LEN: u64 = 2;

/// Bytes of NVRAM (the index register has 7 bits).
pub const CMOS_NVRAM_LEN: usize = 128;

/// The CMOS's index register and NVRAM, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    /// The selected register (0..=0x7f).
    pub index: u8,
    /// Exactly [`CMOS_NVRAM_LEN`] bytes.
    pub nvram: Vec<u8>,
}

/// Why a CMOS could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum CmosError {
    #[error("cmos: nvram is {got} bytes, expected {CMOS_NVRAM_LEN}")]
    NvramLength { got: usize },
    #[error("cmos: index register {0:#x} is out of range (max 0x7f)")]
    Index(u8),
}

/// The clock.
pub struct Cmos {
    index: u8,
    nvram: [u8; CMOS_NVRAM_LEN],
    now: fn() -> SystemTime,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new(SystemTime::now)
    }
}

fn bcd(v: u64) -> u8 {
    // Every caller passes v < 100.
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date (year, month 1-12, day 1-31) from days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Cmos {
    /// A clock reading the time from `now` (tests pass a fixed clock).
    pub fn new(now: fn() -> SystemTime) -> Self {
        Self {
            index: 0,
            nvram: [0; CMOS_NVRAM_LEN],
            now,
        }
    }

    /// The index register and NVRAM.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// A clock reading the host's time with the saved index and NVRAM.
    pub fn from_state(state: &CmosState) -> Result<Cmos, CmosError> {
        Self::from_state_with_clock(state, SystemTime::now)
    }

    fn from_state_with_clock(
        state: &CmosState,
        now: fn() -> SystemTime,
    ) -> Result<Cmos, CmosError> {
        let nvram = <[u8; CMOS_NVRAM_LEN]>::try_from(state.nvram.as_slice()).map_err(|_| {
            CmosError::NvramLength {
                got: state.nvram.len(),
            }
        })?;
        // The data port indexes NVRAM with it.
        if usize::from(state.index) >= CMOS_NVRAM_LEN {
            return Err(CmosError::Index(state.index));
        }
        Ok(Self {
            index: state.index,
            nvram,
            now,
        })
    }

    fn register(&self, index: u8) -> u8 {
        let secs = (self.now)()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let tod = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let year = year.max(0) as u64;
        match index {
            0x00 => bcd(tod % 60),
            0x02 => bcd(tod / 60 % 60),
            0x04 => bcd(tod / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            0x06 => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year % 100),
            0x32 => bcd(year / 100 % 100),
            // Status A: no update in progress, 32.768 kHz time base.
            0x0a => 0x26,
            // Status B: 24-hour mode, BCD.
            0x0b => 0x02,
            0x0c => 0x00,
            // Status D: battery good.
            0x0d => 0x80,
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            0 => self.index,
            1 => self.register(self.index),
            _ => 0xff,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port is the NMI mask; it is not a register bit.
            0 => self.index = value & 0x7f,
            1 if !matches!(self.index, 0x00..=0x0d | 0x32) => {
                self.nvram[usize::from(self.index)] = value;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fixed() -> SystemTime {
        // 2026-11-25 14:03:09 UTC, a Wednesday.
        UNIX_EPOCH + Duration::from_secs(1_795_615_389)
    }

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg | 0x80]);
        let mut d = [0u8];
        c.read(1, &mut d);
        d[0]
    }

    #[test]
    fn reads_time_in_bcd() {
        let mut c = Cmos::new(fixed);
        assert_eq!(read(&mut c, 0x00), 0x09);
        assert_eq!(read(&mut c, 0x02), 0x03);
        assert_eq!(read(&mut c, 0x04), 0x14);
        assert_eq!(read(&mut c, 0x07), 0x25);
        assert_eq!(read(&mut c, 0x08), 0x11);
        assert_eq!(read(&mut c, 0x09), 0x26);
        assert_eq!(read(&mut c, 0x32), 0x20);
        assert_eq!(read(&mut c, 0x06), 0x04);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0, "no update in progress");
    }

    #[test]
    fn nvram_round_trips_and_clock_is_read_only() {
        let mut c = Cmos::new(fixed);
        c.write(0, &[0x40]);
        c.write(1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
        c.write(0, &[0x00]);
        c.write(1, &[0x59]);
        assert_eq!(read(&mut c, 0x00), 0x09);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn state_round_trip() {
        let mut c = Cmos::new(fixed);
        for (reg, v) in [(0x10u8, 0x11u8), (0x40, 0xab), (0x7f, 0xff)] {
            c.write(0, &[reg]);
            c.write(1, &[v]);
        }
        c.write(0, &[0x40]);
        let st = c.state();
        assert_eq!((st.index, st.nvram.len()), (0x40, CMOS_NVRAM_LEN));
        let mut r = Cmos::from_state_with_clock(&st, fixed).unwrap();
        assert_eq!(r.state(), st);
        // The index survives: a data read without selecting first.
        let mut d = [0u8];
        r.read(1, &mut d);
        assert_eq!(d[0], 0xab);
        for reg in (0u8..0x80).chain([0x80, 0xff]) {
            assert_eq!(read(&mut c, reg), read(&mut r, reg), "register {reg:#x}");
        }
        assert!(Cmos::from_state(&st).is_ok());
    }

    #[test]
    fn bad_state_is_an_error() {
        let mut st = Cmos::new(fixed).state();
        st.nvram.pop();
        let err = Cmos::from_state(&st).err().unwrap();
        assert!(matches!(err, CmosError::NvramLength { got: 127 }), "{err}");
        st.nvram = vec![0; 4096];
        assert!(Cmos::from_state(&st).is_err());
        st.nvram = vec![0; CMOS_NVRAM_LEN];
        st.index = 0x80;
        let err = Cmos::from_state(&st).err().unwrap();
        assert!(matches!(err, CmosError::Index(0x80)));
        assert!(err.to_string().starts_with("cmos:"), "{err}");
    }

    #[test]
    fn state_json_round_trip() {
        let mut c = Cmos::new(fixed);
        c.write(0, &[0x20]);
        c.write(1, &[0x42]);
        let st = c.state();
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<CmosState>(&json).unwrap(), st);
        let extra = json.replacen('{', "{\"clock\":0,", 1);
        assert!(serde_json::from_str::<CmosState>(&extra).is_err());
    }
}
