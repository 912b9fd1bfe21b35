// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IMeterLedger} from "../metering/IMeterLedger.sol";
import {ISettlement} from "./ISettlement.sol";
import {SettlementTestBase} from "./SettlementTestBase.t.sol";

// Fuzz and invariant tests of Settlement, run by `npx hardhat test solidity`: tokens are conserved
// by every reading, schedule payment, settlement, deposit and withdrawal; energy is conserved on
// deviations from the schedules in every slot; scheduled sellers are paid their scheduled revenue
// exactly once; a lower register is always refused; a missed reading is absorbed by the next one.

contract SettlementFuzzTest is SettlementTestBase {
    uint256 internal constant SLOTS = 3;
    /// @dev Fuzzed 16-bit energies are scaled up so that bills reach and exceed deposits.
    uint64 internal constant SCALE = 8;

    // Scratch state of one fuzz run (every run starts again from setUp's state).
    uint64[N] internal imp;
    uint64[N] internal exp;
    uint64[N] internal readImp;
    uint64[N] internal readExp;
    uint64[N] internal baseImp;
    uint64[N] internal baseExp;
    bool[N] internal hasBaseline;
    uint32[N] internal lastSlotRead;

    function setUp() public {
        _deployMarket();
    }

    /// Random deposits (often too small, so buyers fall into debt and the slack unit into bad debt),
    /// three slots of random energy for four prosumers after their baselines, random missed readings
    /// and random partial settlements. After every step the escrow identity and the token supply
    /// hold; at the end every slot is closed and, per slot, demand = supply + slack supplied - slack
    /// absorbed (from the test's own meters), the bills net of shortfalls equal the slack unit's
    /// residual, and each participant was billed exactly the energy its meter counted.
    function testFuzz_tokensAndEnergyConserved(
        uint40[N] calldata deposits,
        uint40 slackDeposit,
        uint16[12] calldata imports,
        uint16[12] calldata exports,
        uint16 missMask,
        uint256 orderSeed
    ) public {
        vm.recordLogs();
        _seeDeposits();
        _fund(reserve, RESERVE);
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], deposits[i] % (30 * ONE));
        _fund(slack, slackDeposit % (300 * ONE));
        _step("after deposits");

        vm.warp(_opens(firstSlot) + 1);
        for (uint256 i = 0; i < N; ++i) {
            imp[i] = uint64(i) * 100_000;
            exp[i] = uint64(i) * 7_000;
            _read(i, firstSlot);
        }
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            for (uint256 i = 0; i < N; ++i) {
                imp[i] += uint64(imports[(k - 1) * N + i]) * SCALE;
                exp[i] += uint64(exports[(k - 1) * N + i]) * SCALE;
            }
            vm.warp(_opens(slot) + 1);
            uint256 offset = (orderSeed >> (k * 8)) % N;
            for (uint256 j = 0; j < N; ++j) {
                uint256 i = (j + offset) % N;
                if ((missMask >> ((k - 1) * N + i)) & 1 == 1) continue; // missed reading
                _read(i, slot);
                _step("after a reading");
            }
            // A partial settle of this or an earlier slot after the deadline.
            vm.warp(_deadline(slot) + 1);
            if ((orderSeed >> (100 + k)) & 1 == 1) {
                uint32 target = slot - uint32((orderSeed >> (120 + k * 4)) % k);
                address[] memory some = new address[](2);
                some[0] = accounts[(orderSeed >> (140 + k * 4)) % N];
                some[1] = accounts[(orderSeed >> (160 + k * 4)) % N];
                settlement.settle(target, some);
                _step("after a partial settle");
            }
        }
        // Settle everything, slots in a seed-dependent order.
        uint32 last = firstSlot + uint32(SLOTS);
        vm.warp(_deadline(last) + 1);
        for (uint256 j = 0; j < SLOTS; ++j) {
            uint32 slot = firstSlot + 1 + uint32((orderSeed % SLOTS + j) % SLOTS);
            settlement.settle(slot, _allAccounts());
            _step("after a full settle");
        }
        _requireDepositsSum("at the end");
        require(settlement.openPool() == 0, "open pool left once every slot is closed");

        uint256 closes;
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            ISettlement.SlotView memory s = settlement.slotState(slot);
            require(s.demandWh == meterDemand[slot], "slot demand != what the meters counted");
            require(s.supplyWh == meterSupply[slot], "slot supply != what the meters counted");
            require(s.readings == meterReadings[slot], "slot readings != readings sent");
            require(s.closed == (meterReadings[slot] > 0), "a slot with readings is not closed");
            require(s.billed == s.readings, "a reading is not billed");
            if (s.closed) closes += 1;
        }
        require(slotsClosed == closes, "SlotClosed events != closed slots (were the logs recorded?)");
        for (uint256 i = 0; i < N; ++i) {
            int256 counted = (int256(uint256(readImp[i])) - int256(uint256(baseImp[i])))
                - (int256(uint256(readExp[i])) - int256(uint256(baseExp[i])));
            require(billedWh[accounts[i]] == counted, "energy billed != energy metered since the baseline");
        }
    }

    /// The same market with day-ahead schedules: before each of three slots, random balanced awards
    /// (random buyers and sellers, any of the four may trade) at a random price (mostly around the
    /// slack unit's prices, one time in four anywhere from 1 to 10^10 per kWh) are prepaid into the
    /// slot's pool through the test schedule source; then random meter energy, random missed
    /// readings (a slot may be read by nobody, so only its schedule payment closes it), random
    /// partial settlements and a full settlement in random order. After every call (`_step`): the
    /// escrow identity, the token supply, and every bill and payout against the schedules and the
    /// meters (`_consume`: the source's schedule on every bill, nothing billed twice, each payout
    /// exactly the scheduled revenue floor(|q| * P / 1000) plus the deviation revenue less what an
    /// upward deviation took, energy conserved on deviations and tokens per closed slot; a reading
    /// after missed ones covers their awards too, and no award is covered twice). At the end: every
    /// slot with readings or payments is closed, no pool is open, every counted reading was billed
    /// once, each seller was paid exactly what its covered sales earn, and each participant was
    /// billed exactly the energy its meter counted.
    function testFuzz_schedulesConserveTokensAndEnergy(
        uint40[N] calldata deposits,
        uint40 slackDeposit,
        uint16[12] calldata imports,
        uint16[12] calldata exports,
        uint16[12] calldata awardSizes,
        uint8[3] calldata sellerMasks,
        uint48[3] calldata prices,
        uint16 missMask,
        uint256 orderSeed
    ) public {
        vm.recordLogs();
        _seeDeposits();
        _useScheduleSource();
        // Escrow liquidity for sellers paid before their slot's money is in (a sale covered late is
        // paid from a later slot's pool): a full deposit, as wide prices make large sales.
        _fund(reserve, type(uint48).max);
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], deposits[i] % (30 * ONE));
        _fund(slack, slackDeposit % (300 * ONE));
        _step("after deposits");

        vm.warp(_opens(firstSlot) + 1);
        for (uint256 i = 0; i < N; ++i) {
            imp[i] = uint64(i) * 100_000;
            exp[i] = uint64(i) * 7_000;
            _read(i, firstSlot);
        }
        _step("after the baselines");
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            // Day-ahead clearing of the slot, before its delivery.
            uint16[N] memory sizes;
            for (uint256 i = 0; i < N; ++i) sizes[i] = awardSizes[(k - 1) * N + i];
            // (Wide prices stop at 10^10 per kWh: beyond about 6 * 10^10 the 48-bit earnings field of
            // a reading can overflow, which Settlement.test.ts reports as a bug.)
            uint256 price = prices[k - 1] % 4 == 0
                ? _bound(prices[k - 1], 1, 10 ** 10)
                : _bound(prices[k - 1], FEED_IN / 2, 2 * RETAIL);
            _schedule(slot, _balancedAwards(sellerMasks[k - 1], sizes, SCALE), price);
            _step("after a schedule payment");
            // Delivery and readings.
            for (uint256 i = 0; i < N; ++i) {
                imp[i] += uint64(imports[(k - 1) * N + i]) * SCALE;
                exp[i] += uint64(exports[(k - 1) * N + i]) * SCALE;
            }
            vm.warp(_opens(slot) + 1);
            uint256 offset = (orderSeed >> (k * 8)) % N;
            for (uint256 j = 0; j < N; ++j) {
                uint256 i = (j + offset) % N;
                if ((missMask >> ((k - 1) * N + i)) & 1 == 1) continue; // missed reading
                _read(i, slot);
                _step("after a reading");
            }
            vm.warp(_deadline(slot) + 1);
            if ((orderSeed >> (100 + k)) & 1 == 1) {
                uint32 target = slot - uint32((orderSeed >> (120 + k * 4)) % k);
                address[] memory some = new address[](2);
                some[0] = accounts[(orderSeed >> (140 + k * 4)) % N];
                some[1] = accounts[(orderSeed >> (160 + k * 4)) % N];
                settlement.settle(target, some);
                _step("after a partial settle");
            }
        }
        uint32 last = firstSlot + uint32(SLOTS);
        vm.warp(_deadline(last) + 1);
        for (uint256 j = 0; j < SLOTS; ++j) {
            uint32 slot = firstSlot + 1 + uint32((orderSeed % SLOTS + j) % SLOTS);
            settlement.settle(slot, _allAccounts());
            _step("after a full settle");
        }
        _requireDepositsSum("at the end");
        require(settlement.openPool() == 0, "open pool left once every slot is closed");

        uint256 closes;
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            ISettlement.SlotView memory s = settlement.slotState(slot);
            require(s.demandWh == meterDemand[slot], "slot demand != the deviations the meters and schedules make");
            require(s.supplyWh == meterSupply[slot], "slot supply != the deviations the meters and schedules make");
            require(s.readings == meterReadings[slot], "slot readings != readings sent");
            bool shouldClose = meterReadings[slot] > 0 || schedulePaid[slot] > 0;
            require(s.closed == shouldClose, "a slot with readings or payments is not closed");
            if (shouldClose) closes += 1;
            require(s.billed == s.readings, "a reading is not billed");
            for (uint256 i = 0; i < N; ++i) {
                uint256 bills = billsOf[slot][accounts[i]];
                require(bills == (countedReading[slot][i] ? 1 : 0), "a counted reading not billed exactly once");
            }
        }
        require(slotsClosed == closes, "SlotClosed events != closed slots (were the logs recorded?)");
        for (uint256 i = 0; i < N; ++i) {
            int256 counted = (int256(uint256(readImp[i])) - int256(uint256(baseImp[i])))
                - (int256(uint256(readExp[i])) - int256(uint256(baseExp[i])));
            require(billedWh[accounts[i]] == counted, "energy billed != energy metered since the baseline");
            require(paidSales[i] == coveredSales[i], "scheduled earnings paid != the covered sales' earnings");
        }
    }

    /// A register below the last reading's is refused in any later slot, whatever the other
    /// register does, and a lower reading of the same slot is a conflict; nothing changes.
    function testFuzz_lowerRegisterAlwaysReverts(
        uint40 importWh,
        uint40 exportWh,
        uint40 down,
        uint40 other,
        bool importSide,
        uint8 gap
    ) public {
        uint64 i0 = importSide ? uint64(_bound(importWh, 1, type(uint40).max)) : importWh;
        uint64 e0 = importSide ? exportWh : uint64(_bound(exportWh, 1, type(uint40).max));
        vm.warp(_opens(firstSlot) + 1);
        _submit(0, firstSlot, i0, e0);

        uint64 newImport = importSide ? i0 - uint64(_bound(down, 1, i0)) : other;
        uint64 newExport = importSide ? other : e0 - uint64(_bound(down, 1, e0));
        // Same slot: a different reading is a conflict.
        IMeterLedger.Reading memory same = _reading(0, firstSlot, newImport, newExport);
        (bytes32 r0, bytes32 vs0) = _sign(keys[0], same);
        _requireError(
            _trySubmit(same, r0, vs0),
            abi.encodeWithSelector(IMeterLedger.ReadingConflict.selector, firstSlot, i0, e0),
            "lower reading of the same slot not a conflict"
        );
        // Any later slot: the register went down.
        uint32 slot = firstSlot + 1 + uint32(gap % 16);
        vm.warp(_opens(slot) + 1);
        IMeterLedger.Reading memory lower = _reading(0, slot, newImport, newExport);
        (bytes32 r1, bytes32 vs1) = _sign(keys[0], lower);
        _requireError(
            _trySubmit(lower, r1, vs1),
            abi.encodeWithSelector(
                IMeterLedger.ReadingRegisterDecreased.selector, slot, newImport, newExport, i0, e0
            ),
            "lower register not refused"
        );
        (uint32 lastSlot, uint64 li, uint64 le) = settlement.lastReading(accounts[0]);
        require(lastSlot == firstSlot && li == i0 && le == e0, "a refused reading changed the registers");
    }

    /// Meters that skip random slots lose no energy: each reading carries the whole difference
    /// since the last one, attributed to its own slot, registers never go down, and in the end
    /// the bills cover exactly the metered energy.
    function testFuzz_missedReadingsAreAbsorbed(uint24[6] calldata dImport, uint24[6] calldata dExport, uint8 missMask)
        public
    {
        _fund(accounts[0], 1_000 * ONE);
        _fund(slack, 1_000 * ONE);
        _fund(reserve, RESERVE);
        vm.recordLogs();
        _seeDeposits();
        vm.warp(_opens(firstSlot) + 1);
        imp[0] = 1_000;
        exp[0] = 500;
        _read(0, firstSlot);
        for (uint256 k = 1; k <= 6; ++k) {
            uint32 slot = firstSlot + uint32(k);
            imp[0] += dImport[k - 1];
            exp[0] += dExport[k - 1];
            if ((missMask >> (k - 1)) & 1 == 1 && k < 6) continue;
            vm.warp(_opens(slot) + 1 + k);
            (, uint64 beforeImp, uint64 beforeExp) = settlement.lastReading(accounts[0]);
            _read(0, slot);
            _step("after a reading");
            ISettlement.AccountView memory a = settlement.accountState(accounts[0]);
            require(a.importWh >= beforeImp && a.exportWh >= beforeExp, "a register went down");
            require(
                int256(a.deviationWh) == (int256(uint256(a.importWh)) - int256(uint256(beforeImp))) - (int256(uint256(a.exportWh)) - int256(uint256(beforeExp))),
                "energy not attributed to the reading's slot"
            );
        }
        vm.warp(_deadline(firstSlot + 6) + 1);
        settlement.settle(firstSlot + 6, _allAccounts());
        _step("after the last settle");
        int256 counted = int256(uint256(imp[0])) - 1_000 - (int256(uint256(exp[0])) - 500);
        require(billedWh[accounts[0]] == counted, "energy billed != energy metered");
        _requireIdentity("at the end");
    }

    /// Settling a slot again, by anyone, for any accounts, changes nothing.
    function testFuzz_settleTwiceChangesNothing(uint16[N] calldata nets, uint8 mask) public {
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], 50 * ONE);
        _fund(slack, 100 * ONE);
        vm.warp(_opens(firstSlot) + 1);
        for (uint256 i = 0; i < N; ++i) _read(i, firstSlot);
        for (uint256 i = 0; i < N; ++i) {
            if (i % 2 == 0) imp[i] += nets[i];
            else exp[i] += nets[i];
        }
        vm.warp(_opens(firstSlot + 1) + 1);
        for (uint256 i = 0; i < N; ++i) _read(i, firstSlot + 1);
        vm.warp(_deadline(firstSlot + 1) + 1);
        address[] memory some = new address[](N);
        for (uint256 i = 0; i < N; ++i) some[i] = (mask >> i) & 1 == 1 ? accounts[i] : slack;
        settlement.settle(firstSlot + 1, some);
        bytes32 before = _stateHash(firstSlot + 1);
        settlement.settle(firstSlot + 1, some);
        require(_stateHash(firstSlot + 1) == before, "a repeated settle changed the state");
        settlement.settle(firstSlot + 1, _allAccounts());
        require(settlement.slotState(firstSlot + 1).closed, "slot not closed");
        bytes32 closed = _stateHash(firstSlot + 1);
        settlement.settle(firstSlot + 1, _allAccounts());
        require(_stateHash(firstSlot + 1) == closed, "settling a closed slot changed the state");
        _requireIdentity("at the end");
    }

    /// While the slack unit owes bad debt to escrow, a positive residual it takes at a slot's close
    /// first pays that debt back, as participants' repayments to it do (Settlement._credit). Before
    /// 46ce2ca the residual was transferred in full, badDebt stayed, and with escrow holding less
    /// than the residual the close reverted, so the slot and the reading that would close it were stuck.
    function test_positiveResidualRepaysSlackBadDebtFirst() public {
        // Only account 0 has a deposit, exactly what its slot-2 bill will be: 1_000 Wh at retail.
        _fund(accounts[0], 300_000);
        vm.warp(_opens(firstSlot) + 1);
        _read(0, firstSlot);
        _read(1, firstSlot);
        // Slot 1: account 1 sells 3_000 Wh, nobody buys: it is paid 150_000 at feed-in from escrow,
        // and the slack unit, with no deposit, owes all of it (bad debt).
        exp[1] += 3_000;
        vm.warp(_opens(firstSlot + 1) + 1);
        _read(0, firstSlot + 1);
        _read(1, firstSlot + 1);
        vm.warp(_deadline(firstSlot + 1) + 1);
        settlement.settle(firstSlot + 1, _allAccounts());
        require(settlement.badDebt() == 150_000, "setup: bad debt");
        // Slot 2: account 0 buys 1_000 Wh from the slack unit at retail: residual +300_000.
        imp[0] += 1_000;
        vm.warp(_opens(firstSlot + 2) + 1);
        _read(0, firstSlot + 2);
        _read(1, firstSlot + 2);
        vm.warp(_deadline(firstSlot + 2) + 1);
        // Before the fix this reverted with ERC20InsufficientBalance(settlement, 150_000, 300_000).
        settlement.settle(firstSlot + 2, _allAccounts());
        require(settlement.badDebt() == 0, "the residual did not repay the slack unit's bad debt");
        require(settlement.accountState(slack).deposit == 150_000, "the slack unit's deposit should get only what is left after its debt");
        require(settlement.accountState(slack).debt == 0, "the slack unit's debt is not cleared");
        require(token.balanceOf(slack) == 0, "the slack unit was sent tokens: residuals go into its deposit");
        _requireIdentity("at the end");
    }

    /// Prices above the cap are refused; at the cap they are accepted.
    function test_extremeAcceptedPricesKeepTheEscrowIdentity() public {
        // Prices are capped at 2^28 base units per kWh (Settlement.MAX_PRICE), so that with the
        // markets' largest order every bill and earning fits the packed fields; above it, refused.
        uint256 maxPrice = 2 ** 28;
        for (uint256 k = 0; k < 2; ++k) {
            uint256 retail = k == 0 ? maxPrice + 1 : uint256(uint64(type(int64).max));
            try settlement.setPrices(1, retail) {
                revert("a price beyond the cap was accepted");
            } catch (bytes memory reason) {
                _requireError(reason, abi.encodeWithSelector(ISettlement.SettlementBadPrices.selector, 1, retail), "bad price");
            }
        }
        settlement.setPrices(maxPrice, maxPrice);
    }

    // ---------------------------------------------------------------- helpers

    /// @dev Submits participant `i`'s current registers for `slot` and records what its meter counted.
    function _read(uint256 i, uint32 slot) internal {
        _submit(i, slot, imp[i], exp[i]);
        if (!hasBaseline[i]) {
            hasBaseline[i] = true;
            baseImp[i] = imp[i];
            baseExp[i] = exp[i];
        } else {
            int256 net = (int256(uint256(imp[i])) - int256(uint256(readImp[i])))
                - (int256(uint256(exp[i])) - int256(uint256(readExp[i])));
            _countMeter(lastSlotRead[i], slot, i, net);
        }
        lastSlotRead[i] = slot;
        readImp[i] = imp[i];
        readExp[i] = exp[i];
    }

    /// @dev Checks the logs of the last call (`_consume`), the escrow identity and the token supply.
    function _step(string memory where) internal {
        _consume(vm.getRecordedLogs());
        _requireNoViolation();
        _requireIdentity(where);
        _requireSupply(where);
    }

    function _stateHash(uint32 slot) internal view returns (bytes32) {
        bytes memory all = abi.encode(
            settlement.slotState(slot),
            settlement.totalDeposits(),
            settlement.openPool(),
            settlement.badDebt(),
            token.balanceOf(address(settlement)),
            token.balanceOf(slack)
        );
        for (uint256 i = 0; i < N; ++i) {
            all = abi.encode(all, settlement.accountState(accounts[i]), token.balanceOf(accounts[i]));
        }
        return keccak256(all);
    }
}

/// @dev What the invariant fuzzer drives: day-ahead schedules (through the test schedule source),
/// readings (with missed slots), settle calls, deposits and withdrawals on one market, with the
/// clock moved forward by the handler itself. It keeps what the meters counted and what the
/// schedules said per slot, and checks every call's bills, payouts and closed slots (`_consume`).
contract SettlementHandler is SettlementTestBase {
    uint32 public slot;
    bool public windowOpen;
    uint256 public clock;
    uint64[N] public imp;
    uint64[N] public exp;
    uint32[N] public lastRead;
    uint64[N] public readImp;
    uint64[N] public readExp;
    mapping(uint32 slot => uint256) public readsIn;
    uint32[] public touched;
    uint256 public readingsRecorded;
    uint256 public scheduledSlots;

    constructor() {
        _deployMarket();
        _useScheduleSource();
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], 20 * ONE);
        _fund(slack, 50 * ONE);
        _fund(reserve, RESERVE);
        slot = firstSlot;
        clock = _opens(slot) + 1;
        windowOpen = true;
    }

    // Views for the invariant test.
    function market() external view returns (address, address, address) {
        return (address(token), address(settlement), slack);
    }

    function reserveAccount() external view returns (address) {
        return reserve;
    }

    function scheduleSource() external view returns (address) {
        return address(source);
    }

    function account(uint256 i) external view returns (address) {
        return accounts[i];
    }

    function touchedCount() external view returns (uint256) {
        return touched.length;
    }

    /// Moves to the reading window of a later slot (skipping up to two).
    function advance(uint8 skip) external {
        slot += 1 + uint32(skip % 3);
        clock = _opens(slot) + 1;
        windowOpen = true;
    }

    /// The day-ahead market's awards for the current slot, before any of its readings: balanced
    /// (the sellers in `sellerMask` share what the others buy), at a price around the slack unit's.
    function dayAhead(uint8 sellerMask, uint16[N] calldata sizes, uint32 price) external {
        if (!windowOpen || readsIn[slot] > 0 || awardPrice[slot] != 0) return;
        int256[N] memory q = _balancedAwards(sellerMask, sizes, 4);
        _at();
        vm.recordLogs();
        _seeDeposits();
        _schedule(slot, q, _bound(price, FEED_IN / 2, 2 * RETAIL));
        _consume(vm.getRecordedLogs());
        scheduledSlots += 1;
    }

    /// Participant `who`'s meter counts energy and, in a reading window, sends its reading.
    function read(uint8 who, uint16 dImport, uint16 dExport) external {
        uint256 i = who % N;
        imp[i] += uint64(dImport) * 4;
        exp[i] += uint64(dExport) * 4;
        if (!windowOpen || lastRead[i] == slot) return;
        _at();
        vm.recordLogs();
        _seeDeposits();
        _submit(i, slot, imp[i], exp[i]);
        readsIn[slot] += 1;
        if (lastRead[i] != 0) {
            int256 net = (int256(uint256(imp[i])) - int256(uint256(readImp[i])))
                - (int256(uint256(exp[i])) - int256(uint256(readExp[i])));
            if (meterReadings[slot] == 0) touched.push(slot);
            _countMeter(lastRead[i], slot, i, net);
        }
        lastRead[i] = slot;
        readImp[i] = imp[i];
        readExp[i] = exp[i];
        readingsRecorded += 1;
        _consume(vm.getRecordedLogs());
    }

    /// Closes the reading window and settles this or an earlier slot for the accounts in `mask`.
    function settle(uint8 back, uint8 mask) external {
        uint256 after_ = _deadline(slot) + 1;
        if (clock < after_) clock = after_;
        windowOpen = false;
        uint32 target = slot - uint32(back % 4);
        if (target < firstSlot) target = firstSlot;
        address[] memory list = new address[](N + 1);
        bool all = mask >= 64; // three times in four: everyone, so that slots close often
        for (uint256 i = 0; i < N; ++i) list[i] = all || (mask >> i) & 1 == 1 ? accounts[i] : address(0xdead);
        list[N] = slack;
        _at();
        vm.recordLogs();
        _seeDeposits();
        settlement.settle(target, list);
        _consume(vm.getRecordedLogs());
    }

    /// Someone deposits for participant `who` (or the slack unit).
    function deposit(uint8 who, uint32 amount) external {
        address to = who % (N + 1) == N ? slack : accounts[who % (N + 1)];
        _at();
        vm.recordLogs();
        _seeDeposits();
        _fund(to, _bound(amount, 1, 50 * ONE));
        _consume(vm.getRecordedLogs());
    }

    /// Participant `who` (or the slack unit) withdraws part of its free deposit (it may be billed first).
    function withdraw(uint8 who, uint32 amount) external {
        address from = who % (N + 1) == N ? slack : accounts[who % (N + 1)];
        uint256 free = settlement.withdrawable(from);
        if (free == 0) return;
        _at();
        vm.recordLogs();
        _seeDeposits();
        vm.prank(from);
        try settlement.withdraw(_bound(amount, 1, free)) {} catch {}
        _consume(vm.getRecordedLogs());
    }

    function _at() internal {
        vm.warp(clock);
        clock += 1;
    }
}

/// Invariants over random sequences of handler calls.
/// forge-config: default.invariant.runs = 48
/// forge-config: default.invariant.depth = 48
contract SettlementInvariantTest {
    SettlementHandler internal handler;

    function setUp() public {
        handler = new SettlementHandler();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_escrowIdentity() public view {
        (address tokenAddress, address settlementAddress,) = handler.market();
        SettlementLike x = SettlementLike(settlementAddress);
        int256 lhs = int256(IERC20Like(tokenAddress).balanceOf(settlementAddress) + x.badDebt());
        int256 rhs = int256(x.totalDeposits()) + x.openPool();
        require(lhs == rhs, "balanceOf(settlement) + badDebt != totalDeposits + openPool");
    }

    function invariant_supplyInKnownWallets() public view {
        (address tokenAddress, address settlementAddress, address slack) = handler.market();
        IERC20Like t = IERC20Like(tokenAddress);
        uint256 sum = t.balanceOf(address(handler)) + t.balanceOf(settlementAddress) + t.balanceOf(slack)
            + t.balanceOf(handler.reserveAccount()) + t.balanceOf(handler.scheduleSource());
        for (uint256 i = 0; i < 4; ++i) sum += t.balanceOf(handler.account(i));
        require(sum == t.totalSupply(), "sum of balances != total supply");
    }

    function invariant_depositsSumToTotal() public view {
        (, address settlementAddress, address slack) = handler.market();
        ISettlement s = ISettlement(settlementAddress);
        uint256 sum = s.accountState(slack).deposit + s.accountState(handler.reserveAccount()).deposit;
        for (uint256 i = 0; i < 4; ++i) sum += s.accountState(handler.account(i)).deposit;
        require(sum == SettlementLike(settlementAddress).totalDeposits(), "sum of deposits != totalDeposits");
    }

    function invariant_registersAreTheMetersLastReadings() public view {
        (, address settlementAddress,) = handler.market();
        for (uint256 i = 0; i < 4; ++i) {
            (uint32 lastSlot, uint64 importWh, uint64 exportWh) =
                IMeterLedger(settlementAddress).lastReading(handler.account(i));
            require(lastSlot == handler.lastRead(i), "last slot != last reading sent");
            require(importWh == handler.readImp(i) && exportWh == handler.readExp(i), "registers != last reading sent");
        }
    }

    function invariant_slotTotalsMatchTheMeters() public view {
        (, address settlementAddress,) = handler.market();
        ISettlement s = ISettlement(settlementAddress);
        uint256 n = handler.touchedCount();
        for (uint256 j = 0; j < n; ++j) {
            uint32 slot = handler.touched(j);
            ISettlement.SlotView memory v = s.slotState(slot);
            require(v.demandWh == handler.meterDemand(slot), "slot demand != metered");
            require(v.supplyWh == handler.meterSupply(slot), "slot supply != metered");
            require(v.readings == handler.meterReadings(slot), "slot readings != sent");
            require(v.billed <= v.readings, "more bills than readings");
            require(!v.closed || v.billed == v.readings, "closed with unbilled readings");
        }
    }

    function invariant_closedSlotsConserveEnergyAndTokens() public view {
        require(bytes(handler.violation()).length == 0, handler.violation());
    }
}

interface IERC20Like {
    function balanceOf(address) external view returns (uint256);
    function totalSupply() external view returns (uint256);
}

interface SettlementLike {
    function badDebt() external view returns (uint256);
    function totalDeposits() external view returns (uint256);
    function openPool() external view returns (int256);
}
