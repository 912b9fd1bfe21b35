// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EnergyToken} from "../token/EnergyToken.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {ParticipantRegistry} from "../registry/ParticipantRegistry.sol";
import {Settlement} from "../settlement/Settlement.sol";
import {IDayAheadMarket} from "./IDayAheadMarket.sol";
import {DayAheadMarket} from "./DayAheadMarket.sol";

// Fuzz and invariant tests of DayAheadMarket's escrow, run by `npx hardhat test solidity`: under
// any sequence of placements, changes, cancellations and batches (reverting or not), the market
// holds exactly totalEscrow, which is the sum of its open buy escrows, the sum of its books'
// escrows, and what each trader is missing from its wallet. forge-std is not available here: the
// few cheatcodes are declared below and called at Hardhat's cheatcode address.

/// @dev The cheatcodes these tests use (Foundry-compatible, served by Hardhat's EDR).
interface DayAheadCheats {
    function warp(uint256 timestamp) external;
    function prank(address sender) external;
}

/// @dev A market (token, registry, settlement as schedule sink) and DayAheadMarket with four
/// traders, each minted WALLET tokens and approving the market. The inheriting contract is admin.
abstract contract DayAheadTestBase {
    DayAheadCheats internal constant vm = DayAheadCheats(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    uint256 internal constant N = 4;
    uint256 internal constant SLOTS = 3;
    uint256 internal constant SLOT_SECONDS = 900;
    uint256 internal constant GATE_LEAD = 43_200;
    uint256 internal constant FLOOR = 50_000;
    uint256 internal constant CAP = 300_000;
    uint256 internal constant WALLET = 1_000_000e6;
    /// @dev 2023-11-14 22:13:20 UTC.
    uint256 internal constant START = 1_700_000_000;

    EnergyToken internal token;
    ParticipantRegistry internal registry;
    Settlement internal settlement;
    DayAheadMarket internal market;
    address[N] internal traders;
    /// @dev Three consecutive slots of the day after tomorrow (10:00 UTC on): their gate is a day ahead.
    uint32 internal firstSlot;

    function _deploy() internal {
        vm.warp(START);
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        registry = new ParticipantRegistry(address(this));
        settlement = new Settlement(token, registry, address(this), SLOT_SECONDS, 300, FLOOR, CAP);
        market = new DayAheadMarket(token, registry, settlement, address(this), SLOT_SECONDS, GATE_LEAD, FLOOR, CAP);
        _connectToSettlement();
        for (uint256 i = 0; i < N; ++i) {
            traders[i] = address(uint160(0xDA0000 + i));
            registry.register(
                IParticipantRegistry.Registration({
                    account: traders[i],
                    meterId: bytes32(i + 1),
                    meterKey: address(uint160(0xBEEF00 + i)),
                    kind: i % 2 == 0 ? IParticipantRegistry.Kind.Consumer : IParticipantRegistry.Kind.Prosumer
                })
            );
            token.mint(traders[i], WALLET);
            vm.prank(traders[i]);
            token.approve(address(market), type(uint256).max);
        }
        firstSlot = uint32((START / 1 days + 2) * (1 days / SLOT_SECONDS) + 40);
    }

    /// @dev Makes the market the settlement's schedule source (with MARKET_ROLE): setMarkets(market,
    /// no intraday market), or setScheduleSource(market) on a settlement that has that instead.
    function _connectToSettlement() internal {
        (bool ok,) = address(settlement).call(abi.encodeWithSignature("setMarkets(address,address)", address(market), address(0)));
        if (!ok) {
            (ok,) = address(settlement).call(abi.encodeWithSignature("setScheduleSource(address)", address(market)));
        }
        require(ok, "the settlement took the market neither with setMarkets nor with setScheduleSource");
        require(settlement.hasRole(settlement.MARKET_ROLE(), address(market)), "the market has no MARKET_ROLE");
    }

    function _input(uint256 slotK, bool isSell, uint256 qty, uint256 price)
        internal
        view
        returns (IDayAheadMarket.OrderInput memory)
    {
        return IDayAheadMarket.OrderInput({
            slot: firstSlot + uint32(slotK % SLOTS),
            isSell: isSell,
            // Mostly valid, sometimes zero or out of bounds, so that reverts are part of the runs.
            qtyWh: uint40(qty % 20_001),
            price: uint48(FLOOR - 10 + (price % (CAP - FLOOR + 21)))
        });
    }

    function _escrowOf(uint256 qtyWh, uint256 price) internal pure returns (uint256) {
        return (qtyWh * price + 999) / 1000;
    }

    /// @dev balanceOf(market) == totalEscrow == sum of open buy escrows == sum of the books' escrows,
    /// and each trader's wallet plus its open escrows is what it was minted.
    function _requireConserved(string memory where) internal view {
        uint256 total = market.totalEscrow();
        require(token.balanceOf(address(market)) == total, string.concat("balanceOf(market) != totalEscrow: ", where));
        uint256 books;
        uint256 open;
        for (uint256 s = 0; s < SLOTS; ++s) {
            uint32 slot = firstSlot + uint32(s);
            IDayAheadMarket.BookView memory b = market.book(slot);
            if (b.cleared) continue;
            books += b.escrow;
        }
        for (uint256 i = 0; i < N; ++i) {
            uint256 mine;
            for (uint256 s = 0; s < SLOTS; ++s) {
                uint32 slot = firstSlot + uint32(s);
                IDayAheadMarket.Order memory o = market.orderOf(slot, traders[i]);
                if (o.placed && !o.isSell) mine += _escrowOf(o.qtyWh, o.price);
            }
            open += mine;
            require(token.balanceOf(traders[i]) + mine == WALLET, string.concat("wallet + open escrow != minted: ", where));
        }
        require(open == total, string.concat("sum of open escrows != totalEscrow: ", where));
        require(books == total, string.concat("sum of book escrows != totalEscrow: ", where));
    }

    /// @dev Operation `op` by trader `who`: place, change, cancel, or a batch of three (placeOrders).
    /// Reverts (zero quantity, bounds, order exists, side changed ...) are caught: they must leave
    /// the escrow as it was, which the caller checks.
    function _operate(uint8 op, uint8 who, uint8 slotK, bool isSell, uint40 qty, uint48 price) internal {
        address t = traders[who % N];
        IDayAheadMarket.OrderInput memory input = _input(slotK, isSell, qty, price);
        uint256 kind = op % 5;
        vm.prank(t);
        if (kind == 0) {
            try market.placeOrder(input) {} catch {}
        } else if (kind == 1) {
            try market.changeOrder(input) {} catch {}
        } else if (kind == 2) {
            try market.cancelOrder(input.slot) {} catch {}
        } else {
            IDayAheadMarket.OrderInput[] memory batch = new IDayAheadMarket.OrderInput[](3);
            batch[0] = input;
            // The same slot twice in a batch (a change of what the batch just placed), and another slot.
            batch[1] = _input(slotK, isSell, uint256(qty) * 7 + 13, uint256(price) * 3 + 1);
            batch[2] = _input(uint256(slotK) + 1, !isSell, uint256(qty) * 5 + 1, uint256(price) + 99_991);
            if (kind == 4) batch[1].qtyWh = uint40(qty % 3 == 0 ? 0 : batch[1].qtyWh);
            try market.placeOrders(batch) {} catch {}
        }
    }
}

contract DayAheadMarketFuzzTest is DayAheadTestBase {
    function setUp() public {
        _deploy();
    }

    /// Thirty-two random operations by four traders in three slots, escrow conserved after each;
    /// then every slot starts uncleared and every escrow is reclaimed: the market holds nothing and
    /// each wallet is whole again.
    function testFuzz_escrowConservedUnderPlaceChangeCancel(
        uint8[32] calldata ops,
        uint8[32] calldata who,
        uint8[32] calldata slotK,
        uint40[32] calldata qtys,
        uint48[32] calldata prices
    ) public {
        for (uint256 k = 0; k < 32; ++k) {
            _operate(ops[k], who[k], slotK[k], (ops[k] >> 4) & 1 == 1, qtys[k], prices[k]);
            _requireConserved("after an operation");
        }
        // Nobody clears; the slots start and the buyers take their escrow back.
        vm.warp(uint256(firstSlot + uint32(SLOTS - 1)) * SLOT_SECONDS);
        address[] memory all = new address[](N);
        for (uint256 i = 0; i < N; ++i) all[i] = traders[i];
        for (uint256 s = 0; s < SLOTS; ++s) {
            market.reclaim(firstSlot + uint32(s), all);
            _requireConserved("after a reclaim");
        }
        require(market.totalEscrow() == 0, "escrow left after reclaiming every slot");
        for (uint256 i = 0; i < N; ++i) require(token.balanceOf(traders[i]) == WALLET, "a wallet is not whole after reclaim");
    }

    /// A change moves exactly the difference of the two escrows, in the same transaction.
    function testFuzz_changeMovesTheEscrowDifference(uint40 q1, uint48 p1, uint40 q2, uint48 p2) public {
        IDayAheadMarket.OrderInput memory first = _input(0, false, uint256(q1) % 20_000 + 1, p1 % (CAP - FLOOR + 1) + 10);
        IDayAheadMarket.OrderInput memory second = _input(0, false, uint256(q2) % 20_000 + 1, p2 % (CAP - FLOOR + 1) + 10);
        vm.prank(traders[0]);
        market.placeOrder(first);
        uint256 before = token.balanceOf(traders[0]);
        vm.prank(traders[0]);
        market.changeOrder(second);
        int256 moved = int256(before) - int256(token.balanceOf(traders[0]));
        require(
            moved == int256(_escrowOf(second.qtyWh, second.price)) - int256(_escrowOf(first.qtyWh, first.price)),
            "a change moved something else than the escrow difference"
        );
        _requireConserved("after a change");
    }
}

/// @dev What the invariant fuzzer drives: random operations by the four traders before the gate.
contract DayAheadHandler is DayAheadTestBase {
    uint256 public operations;

    constructor() {
        _deploy();
    }

    function operate(uint8 op, uint8 who, uint8 slotK, bool isSell, uint40 qty, uint48 price) external {
        vm.warp(START + operations);
        _operate(op, who, slotK, isSell, qty, price);
        operations += 1;
    }

    function check() external view {
        _requireConserved("invariant");
    }
}

/// Escrow conservation over random sequences of handler calls.
/// forge-config: default.invariant.runs = 48
/// forge-config: default.invariant.depth = 48
contract DayAheadInvariantTest {
    DayAheadHandler internal handler;

    function setUp() public {
        handler = new DayAheadHandler();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_escrowConserved() public view {
        handler.check();
    }
}
