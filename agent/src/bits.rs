//! Reading H.264 / H.265 parameter sets: emulation-prevention removal and an MSB-first bit
//! reader with Exp-Golomb codes. Pure; shared by `h264` and `h265`.

/// Removes emulation-prevention bytes (00 00 03 → 00 00).
pub(crate) fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Why a parameter set could not be read.
pub(crate) type BitsError = &'static str;

pub(crate) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Bits<'a> {
        Bits { data, pos: 0 }
    }

    pub(crate) fn bit(&mut self) -> Result<u32, BitsError> {
        let byte = self.data.get(self.pos / 8).ok_or("truncated")?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, BitsError> {
        (0..n).try_fold(0, |acc, _| Ok((acc << 1) | self.bit()?))
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), BitsError> {
        if (self.pos + n).div_ceil(8) > self.data.len() {
            return Err("truncated");
        }
        self.pos += n;
        Ok(())
    }

    pub(crate) fn ue(&mut self) -> Result<u32, BitsError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("exp-Golomb code too long");
            }
        }
        Ok((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    pub(crate) fn se(&mut self) -> Result<i32, BitsError> {
        let v = self.ue()?;
        Ok(if v % 2 == 1 {
            v.div_ceil(2) as i32
        } else {
            -((v / 2) as i32)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bits_and_exp_golomb() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3]), [0, 0, 1, 0, 0]);
        // 1 | 010 | 011 | 00100 → ue 0, 1, 2, 3
        let mut b = Bits::new(&[0b1010_0110, 0b0100_0000]);
        assert_eq!(
            (b.ue(), b.ue(), b.ue(), b.ue()),
            (Ok(0), Ok(1), Ok(2), Ok(3))
        );
        let mut b = Bits::new(&[0b0110_0000]);
        assert_eq!(b.se(), Ok(-1));
        assert_eq!(Bits::new(&[0]).ue(), Err("truncated"));
        assert!(Bits::new(&[0xFF]).skip(9).is_err());
    }
}
